"""[metrics] end to end: a real `popbox serve`, a scripted poplib session, then the
Prometheus endpoint scraped over HTTP and parsed with prometheus_client's own parser; the
logout line's exact counts."""

from __future__ import annotations

import poplib
import re
import urllib.request
from dataclasses import dataclass

import pytest
from conftest import Starter
from prometheus_client.parser import text_string_to_metric_families

from server_helpers import PopboxServer, RawClient, crlf

MESSAGES = [
    b"From: a@example.org\r\nSubject: one\r\n\r\nfirst body\r\n",
    b"From: b@example.org\nSubject: two\n\nsecond body\nmore\n",
    b"Subject: three\r\n\r\n" + b"x" * 500 + b"\r\n",
]
USERS = {"alice": "{PLAIN}secret"}
METRICS = """failure_delay = 0
failure_delay_max = 0
[metrics]
address = "127.0.0.1"
port = 0
[limits]
max_connections_per_ip = 2
"""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: PopboxServer) -> Samples:
    """Every sample at the endpoint, keyed by (sample name, labels)."""
    port = int(server.log.wait_for(r"metrics listening on 127\.0\.0\.1:(\d+)").group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def commands(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["command"]: count
        for (name, labels), count in samples.items()
        if name == "popbox_commands_total" and count
    }


LOGOUT = re.compile(
    r"logout user=(\S+) client=127\.0\.0\.1 reason=(\w+) top=(\d+)/(\d+) retr=(\d+)/(\d+) "
    r"del=(\d+)/(\d+) size=(\d+) bytes_in=(\d+) bytes_out=(\d+)$"
)


def logouts(server: PopboxServer, count: int) -> list[tuple[str, ...]]:
    """The fields of the logout lines, once there are `count` of them."""

    def found() -> list[tuple[str, ...]]:
        return [m.groups() for line in server.log.lines if (m := LOGOUT.search(line))]

    with server.log.cond:
        server.log.cond.wait_for(lambda: len(found()) >= count or server.log.closed, 10)
        return found()


@dataclass
class Script:
    """What the scripted clients saw."""

    maildrop_octets: int = 0
    retr_bytes: int = 0  # RETR replies, status line to terminator
    raw_received: bytes = b""  # everything the raw client got


def run_script(server: PopboxServer) -> Script:
    script = Script()
    # A failed login, on its own connection.
    failed = poplib.POP3(server.host, server.port, timeout=10)
    failed.user("alice")
    with pytest.raises(poplib.error_proto, match="invalid user name or password"):
        failed.pass_("wrong")
    failed.quit()
    server.log.wait_for(r"logout user=- ")
    # The session: login, STAT, LIST, RETR x2, DELE, QUIT ...
    client = poplib.POP3(server.host, server.port, timeout=10)
    client.user("alice")
    client.pass_("secret")
    count, script.maildrop_octets = client.stat()
    assert (count, script.maildrop_octets) == (3, sum(len(crlf(m)) for m in MESSAGES))
    client.list()
    for number in (1, 2):
        status, lines, octets = client.retr(number)
        assert b"\r\n".join(lines) + b"\r\n" == crlf(MESSAGES[number - 1])
        script.retr_bytes += len(status) + 2 + octets + len(b".\r\n")
    client.dele(3)
    # ... meanwhile a second login of alice gets [IN-USE] ...
    conflict = poplib.POP3(server.host, server.port, timeout=10)
    conflict.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        conflict.pass_("secret")
    # ... and a third connection from the same address is over max_connections_per_ip.
    refused = RawClient(server)
    assert refused.greeting == REFUSAL
    refused.read_until_closed()
    conflict.quit()
    client.quit()
    # Unknown keywords count under one label value, whatever the client sends.
    raw = RawClient(server)
    replies = [raw.command(b"XYZZY"), raw.command(b"HELO"), raw.command(b"QUIT")]
    assert replies[:2] == [b"-ERR unknown command\r\n"] * 2
    script.raw_received = raw.greeting + b"".join(replies)
    return script


LOGIN = b"USER alice\r\nPASS secret\r\n"
REFUSAL = b"-ERR [SYS/TEMP] too many connections from your address\r\n"
ALICE_SENT = b"USER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nRETR 1\r\nRETR 2\r\nDELE 3\r\nQUIT\r\n"
RAW_SENT = b"XYZZY\r\nHELO\r\nQUIT\r\n"


def test_scripted_session_gives_exact_metrics(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": MESSAGES}, extra=METRICS)
    before = scrape(server)
    zero = [
        "popbox_connections_total",
        "popbox_connections_active",
        "popbox_connections_waiting",
        "popbox_bad_command_delays_total",
    ]
    assert [value(before, name) for name in zero] == [0, 0, 0, 0]
    assert value(before, "popbox_commands_total", command="unknown") == 0
    assert value(before, "popbox_retr_duration_seconds_count") == 0

    script = run_script(server)

    done = logouts(server, 4)
    # The failed login, the [IN-USE] one, alice, the raw client (the refused one had none).
    assert [fields[:2] for fields in done] == [("-", "quit")] * 2 + [("alice", "quit")] + [
        ("-", "quit")
    ]
    # alice's session: top=0/0 retr=2/<octets> del=1/3 size=<maildrop> bytes_in=<sent>
    counts = [int(n) for n in done[2][2:10]]
    assert counts == [0, 0, 2, script.retr_bytes, 1, 3, script.maildrop_octets, len(ALICE_SENT)]
    # The raw session's bytes are known exactly on both sides.
    counts = [int(n) for n in done[3][2:]]
    assert counts == [0] * 7 + [len(RAW_SENT), len(script.raw_received)]

    after = scrape(server)
    expected = {
        ("popbox_connections_total", ()): 5,
        ("popbox_connections_active", ()): 0,
        ("popbox_connections_waiting", ()): 0,
        ("popbox_bad_command_delays_total", ()): 0,  # RAW_SENT's two: answered at once
        ("popbox_connections_refused_total", (("reason", "ip_limit"),)): 1,
        ("popbox_logins_total", (("mechanism", "USER"), ("result", "ok"))): 1,
        ("popbox_logins_total", (("mechanism", "USER"), ("result", "failed"))): 1,
        ("popbox_logins_total", (("mechanism", "USER"), ("result", "in_use"))): 1,
        ("popbox_lock_conflicts_total", ()): 1,
        ("popbox_messages_retrieved_total", ()): 2,
        ("popbox_messages_deleted_total", ()): 1,
        ("popbox_retr_duration_seconds_count", ()): 2,
        ("popbox_retr_duration_seconds_bucket", (("le", "+Inf"),)): 2,
        ("popbox_sent_bytes_total", ()): sum(int(d[10]) for d in done) + len(REFUSAL),
        ("popbox_received_bytes_total", ()): sum(int(d[9]) for d in done),
    }
    assert {key: after[key[0], frozenset(key[1])] for key in expected} == expected
    assert len([key for key in after if key[0] == "popbox_logins_total"]) == 3
    assert not [key for key in after if key[0] == "popbox_store_errors_total"]
    assert commands(after) == {
        "USER": 3,
        "PASS": 3,
        "STAT": 1,
        "LIST": 1,
        "RETR": 2,
        "DELE": 1,
        "QUIT": 4,
        "unknown": 2,
    }
    assert 0 < value(after, "popbox_retr_duration_seconds_sum") < 10
    assert not [key for key in after if key[0].endswith("_created")]


def test_bad_command_delays_are_counted(popbox: Starter) -> None:
    server = popbox(USERS, extra=METRICS + "bad_command_delay = 0.05\n")
    client = RawClient(server)
    client.send(b"".join(b"BAD%d\r\n" % n for n in range(8)))
    assert [client.read_line() for _ in range(8)] == [b"-ERR unknown command\r\n"] * 8
    # max_bad_commands is 10: the first five are answered at once, the 6th-8th wait.
    assert value(scrape(server), "popbox_bad_command_delays_total") == 3
    assert value(scrape(server), "popbox_commands_total", command="unknown") == 8


def test_logout_line_for_every_ending(popbox: Starter) -> None:
    """Disconnect and shutdown end a logged-in session with its counts too."""
    server = popbox(USERS, {"alice": MESSAGES}, extra=METRICS)
    size = sum(len(crlf(m)) for m in MESSAGES)
    client = RawClient(server)
    sent = LOGIN + b"TOP 1 0\r\n"
    client.login("alice", "secret")
    client.send(b"TOP 1 0\r\n")
    head = client.read_multiline()
    assert head.endswith(b"Subject: one\r\n\r\n.\r\n")
    client.close()
    server.log.wait_for(
        rf"logout user=alice client=127\.0\.0\.1 reason=disconnected top=1/{len(head)} "
        rf"retr=0/0 del=0/3 size={size} bytes_in={len(sent)} "
    )
    second = RawClient(server)
    second.login("alice", "secret")
    assert server.stop() == 0
    server.log.wait_for(
        rf"logout user=alice client=127\.0\.0\.1 reason=shutdown top=0/0 retr=0/0 del=0/3 "
        rf"size={size} bytes_in={len(LOGIN)} "
    )


def test_store_failure_at_login_is_counted(popbox: Starter) -> None:
    server = popbox({"bob": "{PLAIN}bobpw"}, extra=METRICS)
    # bob's Maildir is a regular file: the store cannot open it.
    server.maildir("bob").parent.mkdir(parents=True)
    server.maildir("bob").write_bytes(b"not a directory")
    client = poplib.POP3(server.host, server.port, timeout=10)
    client.user("bob")
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
        client.pass_("bobpw")
    client.quit()
    server.log.wait_for(r"logout user=- ")
    after = scrape(server)
    assert value(after, "popbox_store_errors_total", operation="open") == 1
    assert value(after, "popbox_logins_total", result="maildrop_unavailable", mechanism="USER") == 1
    assert value(after, "popbox_lock_conflicts_total") == 0


def test_workers_metrics_are_summed_by_the_master(popbox: Starter) -> None:
    """workers = 2: each worker counts into prometheus-client's multiprocess files and the
    master serves the sum."""
    from daemon_helpers import served_by, stopped, worker_pids  # noqa: PLC0415

    server = popbox(USERS, {"alice": MESSAGES}, extra=METRICS, workers=2)
    pids = worker_pids(server)
    clients = []
    for busy, free in ((pids[0], pids[1]), (pids[1], pids[0])):
        with stopped(busy):
            client = RawClient(server)
            assert served_by(client) == free
            clients.append(client)
    assert clients[0].login("alice", "secret").startswith(b"+OK maildrop has 3")
    assert clients[1].login("alice", "secret").startswith(b"-ERR [IN-USE]")
    clients[0].send(b"RETR 1\r\n")
    assert clients[0].read_multiline().startswith(b"+OK")
    samples = scrape(server)
    assert value(samples, "popbox_connections_total") == 2
    assert value(samples, "popbox_connections_active") == 2
    assert value(samples, "popbox_logins_total", result="ok", mechanism="USER") == 1
    assert value(samples, "popbox_logins_total", result="in_use", mechanism="USER") == 1
    assert value(samples, "popbox_lock_conflicts_total") == 1
    assert value(samples, "popbox_messages_retrieved_total") == 1
    for client in clients:
        assert client.command(b"QUIT").startswith(b"+OK")
        client.read_until_closed()
    assert value(scrape(server), "popbox_connections_active") == 0


def test_connections_refused_for_their_proxy_header_are_counted(popbox: Starter) -> None:
    import socket  # noqa: PLC0415

    listener = (
        '[[listen]]\naddress = "127.0.0.1"\nport = 0\nproxy_protocol = true\n'
        'trusted_proxies = ["127.0.0.2/32"]\n'
    )
    server = popbox(USERS, {"alice": MESSAGES}, extra=METRICS + listener)
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", server.proxy_ports["none"])) as sock:
            assert sock.recv(100) == b""  # closed without a greeting: not a trusted proxy
    server.log.wait_count(r"refused client=127\.0\.0\.1 reason='not in trusted_proxies'", 2)
    samples = scrape(server)
    assert value(samples, "popbox_connections_refused_total", reason="proxy") == 2
    assert value(samples, "popbox_connections_total") == 2
