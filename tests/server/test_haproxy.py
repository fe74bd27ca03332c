"""A real HAProxy in front of the real `popbox serve`, speaking the PROXY protocol.

Clients connect from 127.0.0.2 (or .3) while HAProxy connects to popbox from 127.0.0.1,
so every log line, limit and block can be checked to name the real client: send-proxy
(v1), send-proxy-v2, TLS terminated at HAProxy with send-proxy-v2-ssl (popbox sees
PP2_CLIENT_SSL and allows USER/PASS under plaintext = "never"), TLS passed through to an
implicit-TLS listener, two popbox nodes sharing one mail store behind one HAProxy (the
lock holds across them; a node killed mid-session loses nothing and keeps no lock), and
contrib/haproxy/haproxy.cfg itself.
"""

from __future__ import annotations

import os
import re
import smtplib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Starter, TlsFiles

from haproxy_helpers import GLOBAL, RUNNING, HAProxy, free_port, start_haproxy
from server_helpers import RUNNING as POPBOX_RUNNING
from server_helpers import (
    PopboxServer,
    RawClient,
    crlf,
    fail2ban_matches,
    launch,
    maildir_contents,
    which_or_skip,
    write_maildir,
)

_, pytestmark = which_or_skip("haproxy")

USERS = {"alice": "{PLAIN}secret", "bob": "{PLAIN}bobpw"}
MESSAGES = [b"Subject: %d\n\nmessage %d\n" % (n, n) for n in range(1, 4)]
MAIL = {"alice": MESSAGES}
CONTRIB = Path(__file__).parents[2] / "contrib" / "haproxy" / "haproxy.cfg"
FILTER = Path(__file__).parents[2] / "contrib" / "fail2ban" / "filter.d" / "popbox.conf"
TRUSTED = '["127.0.0.1/32"]'
REFUSED = b"-ERR [AUTH] plaintext authentication disallowed without TLS\r\n"
# What LMTP delivery puts on top (delivery/message.py), as Postfix and Dovecot do.
LMTP_TRACE = b"Return-Path: <sender@example.org>\r\nDelivered-To: alice\r\n"

StartHAProxy = Callable[[Path, str, list[int]], HAProxy]


@pytest.fixture
def haproxy() -> Iterator[StartHAProxy]:
    """start(directory, config text, frontend ports) -> a running haproxy. Also stops the
    popbox nodes a test started itself (start_node), as the popbox fixture does."""
    yield start_haproxy
    while RUNNING:
        RUNNING.pop().stop()
    while POPBOX_RUNNING:
        POPBOX_RUNNING.pop().kill()


def proxy_listener(tls: str = "none") -> str:
    return (
        f'[[listen]]\naddress = "127.0.0.1"\nport = 0\ntls = "{tls}"\n'
        f"proxy_protocol = true\ntrusted_proxies = {TRUSTED}\n"
    )


def one_backend(servers: str, *binds: str) -> str:
    """HAProxy frontends (bind lines) sending to one backend with `servers` lines."""
    frontends = "".join(
        f"frontend f{n}\n    bind {bind}\n    default_backend popbox\n"
        for n, bind in enumerate(binds)
    )
    return GLOBAL + frontends + "backend popbox\n" + servers


def capa(client: RawClient) -> list[bytes]:
    client.send(b"CAPA\r\n")
    return client.read_multiline().split(b"\r\n")[1:-2]


def no_line_names_the_proxy(server: PopboxServer, *, health_checks: bool = False) -> None:
    """HAProxy's own address appears only as proxy=, never as a session's client (except
    its own health checks, which connect with a LOCAL header and never log in)."""
    with server.log.cond:
        lines = [line for line in server.log.lines if re.search(r"client=127\.0\.0\.1\b", line)]
    if health_checks:
        lines = [line for line in lines if "login" in line]
    assert lines == []


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_the_real_client_address_in_every_line(
    popbox: Starter, haproxy: StartHAProxy, tmp_path: Path, send_proxy: str
) -> None:
    server = popbox(USERS, MAIL, extra=proxy_listener())
    port = free_port()
    backend = f"    server s 127.0.0.1:{server.proxy_ports['none']} {send_proxy}\n"
    haproxy(tmp_path / "haproxy", one_backend(backend, f"127.0.0.1:{port}"), [port])
    client = RawClient(server, port=port, source="127.0.0.2")
    assert client.command(b"USER alice") == b"+OK send PASS\r\n"
    assert client.command(b"PASS wrong") == b"-ERR [AUTH] invalid user name or password\r\n"
    assert client.login("alice", "secret").startswith(b"+OK maildrop has 3 messages")
    client.send(b"RETR 2\r\n")
    assert (
        client.read_multiline()
        == b"+OK %d octets\r\n" % len(crlf(MESSAGES[1])) + crlf(MESSAGES[1]) + b".\r\n"
    )
    assert client.command(b"QUIT").startswith(b"+OK")
    server.log.wait_for(r"connect client=127\.0\.0\.2 proxy=127\.0\.0\.1$")
    server.log.wait_for(
        r"WARNING popbox\.login: login failed user=alice client=127\.0\.0\.2 mechanism=USER "
        r"reason=invalid-credentials$"
    )
    server.log.wait_for(r"login ok user=alice client=127\.0\.0\.2 mechanism=USER messages=3")
    server.log.wait_for(r"logout user=alice client=127\.0\.0\.2 reason=quit top=0/0 retr=1/")
    no_line_names_the_proxy(server)


def test_blocks_and_fail2ban_hit_the_client_not_haproxy(
    popbox: Starter, haproxy: StartHAProxy, tmp_path: Path
) -> None:
    extra = "failure_delay = 0\nfailure_delay_max = 0\nmax_failures = 1\n" + proxy_listener()
    server = popbox(USERS, MAIL, extra=extra)
    port = free_port()
    backend = f"    server s 127.0.0.1:{server.proxy_ports['none']} send-proxy-v2\n"
    haproxy(tmp_path / "haproxy", one_backend(backend, f"127.0.0.1:{port}"), [port])
    attacker = RawClient(server, port=port, source="127.0.0.2")
    for password in (b"guess1", b"guess2"):
        attacker.command(b"USER mallory")
        assert attacker.command(b"PASS " + password).startswith(b"-ERR [AUTH]")
    blocked = RawClient(server, port=port, source="127.0.0.2")
    assert blocked.greeting == (
        b"-ERR [SYS/TEMP] too many failed logins from your address, try again later\r\n"
    )
    # Everyone else comes through the same HAProxy address, and is not blocked.
    other = RawClient(server, port=port, source="127.0.0.3")
    assert other.login("alice", "secret").startswith(b"+OK maildrop has 3 messages")
    server.log.wait_for(r"refused client=127\.0\.0\.2 reason='too many failed logins")
    server.log.wait_for(r"login ok user=alice client=127\.0\.0\.3 ")
    no_line_names_the_proxy(server)
    # The fail2ban filter in contrib/ bans 127.0.0.2, never HAProxy.
    with server.log.cond:
        lines = list(server.log.lines)
    assert fail2ban_matches(lines, FILTER, tmp_path) == (3, ["127.0.0.2"] * 3)


def haproxy_pem(tls_files: TlsFiles) -> Path:
    """HAProxy's `crt`: the certificate chain and the key in one file."""
    pem = tls_files.certificate.with_name("haproxy.pem")
    pem.write_bytes(tls_files.certificate.read_bytes() + tls_files.private_key.read_bytes())
    return pem


def test_tls_ended_at_haproxy_counts_as_tls(
    popbox: Starter, haproxy: StartHAProxy, tls_files: TlsFiles, tmp_path: Path
) -> None:
    extra = 'plaintext = "never"\n' + tls_files.toml + proxy_listener("starttls")
    server = popbox(USERS, MAIL, extra=extra)
    tls_port, plain_port = free_port(), free_port()
    backend = f"    server s 127.0.0.1:{server.proxy_ports['starttls']} send-proxy-v2-ssl\n"
    config = one_backend(
        backend,
        f"127.0.0.1:{tls_port} ssl crt {haproxy_pem(tls_files)}",
        f"127.0.0.1:{plain_port}",
    )
    haproxy(tmp_path / "haproxy", config, [tls_port, plain_port])
    context = tls_files.client_context()
    secure = RawClient(server, port=tls_port, source="127.0.0.2", tls=context)
    tags = capa(secure)
    assert b"USER" in tags and b"STLS" not in tags
    assert secure.command(b"STLS") == b"-ERR command not permitted when TLS active\r\n"
    assert secure.login("alice", "secret").startswith(b"+OK maildrop has 3 messages")
    server.log.wait_for(r"tls client=127\.0\.0\.2 version=TLSv1\.3 cipher=\S+ proxy=127\.0\.0\.1$")
    server.log.wait_for(r"login ok user=alice client=127\.0\.0\.2 mechanism=USER ")
    assert secure.command(b"QUIT").startswith(b"+OK")
    # The cleartext frontend, same backend: no SSL TLV, so no passwords until STLS.
    cleartext = RawClient(server, port=plain_port, source="127.0.0.2")
    tags = capa(cleartext)
    assert b"USER" not in tags and b"STLS" in tags
    assert cleartext.command(b"USER alice") == REFUSED
    assert cleartext.command(b"STLS") == b"+OK Begin TLS negotiation\r\n"
    cleartext.starttls(context)
    assert cleartext.login("alice", "secret").startswith(b"+OK maildrop has 3 messages")
    no_line_names_the_proxy(server)


def test_tls_passed_through_to_an_implicit_listener(
    popbox: Starter, haproxy: StartHAProxy, tls_files: TlsFiles, tmp_path: Path
) -> None:
    extra = 'plaintext = "never"\n' + tls_files.toml + proxy_listener("implicit")
    server = popbox(USERS, MAIL, extra=extra)
    port = free_port()
    backend = f"    server s 127.0.0.1:{server.proxy_ports['implicit']} send-proxy-v2\n"
    haproxy(tmp_path / "haproxy", one_backend(backend, f"127.0.0.1:{port}"), [port])
    context = tls_files.client_context()
    for _ in range(20):
        client = RawClient(server, port=port, source="127.0.0.2", tls=context)
        assert client.login("alice", "secret").startswith(b"+OK maildrop has 3 messages")
        assert client.command(b"QUIT").startswith(b"+OK")
    server.log.wait_count(
        r"tls client=127\.0\.0\.2 version=TLSv1\.[23] cipher=\S+ proxy=127\.0\.0\.1$", 20
    )
    no_line_names_the_proxy(server)


# -- two nodes, one mail store --------------------------------------------------------------


@dataclass
class SharedStore:
    """A mail store two popbox nodes serve together: its [mail] table, a way to put
    messages in, and a way to count what is stored."""

    mail_toml: str
    deliver: Callable[[str, list[bytes]], None]
    stored: Callable[[str], int]


@pytest.fixture(params=["maildir", "postgresql"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> SharedStore:
    """One parameter per store kind; each must keep the maildrop lock across processes
    (for PostgreSQL: across machines, as an advisory lock on the session's connection)."""
    root = tmp_path / "shared-mail"
    if request.param == "postgresql":
        from pg_helpers import deliver as pg_deliver  # noqa: PLC0415

        url: str = request.getfixturevalue("pg_url")
        server = request.getfixturevalue("pg_server")
        database: str = request.getfixturevalue("pg_database")

        def count(user: str) -> int:
            query = (
                "SELECT count(*) FROM messages m JOIN maildrops d ON d.id = m.maildrop_id"
                " WHERE d.name = $1"
            )
            return int(server.sql(query, user, database=database)[0][0])

        return SharedStore(
            mail_toml=f'[mail]\nlocation = "{url}"\n',
            deliver=lambda user, messages: pg_deliver(url, user, messages),
            stored=count,
        )
    if request.param == "maildir":

        def deliver(user: str, messages: list[bytes]) -> None:
            write_maildir(root / user / "Maildir", messages)

        return SharedStore(
            mail_toml=f'[mail]\nlocation = "maildir:{root}/%u/Maildir"\n',
            deliver=deliver,
            stored=lambda user: len(maildir_contents(root / user / "Maildir")),
        )
    raise AssertionError(request.param)


def start_node(root: Path, name: str, store: SharedStore) -> PopboxServer:
    """A `popbox serve` named `name` (its greeting says so) on the shared store."""
    root.mkdir(parents=True, exist_ok=True)
    users = root / "users"
    users.write_text("".join(f"{u}:{s}\n" for u, s in USERS.items()))
    config = root / "popbox.toml"
    config.write_text(
        f'hostname = "{name}"\nworkers = 1\nshutdown_timeout = 0\n'
        + proxy_listener()
        + f'[auth]\npasswd_file = "{users}"\nfailure_delay = 0.3\nfailure_delay_max = 0.3\n'
        + store.mail_toml
        + '[lmtp]\naddress = "127.0.0.1"\nport = 0\n'
    )
    return launch(root, config)


def node_of(client: RawClient) -> str:
    """Which node answered: its hostname ends the greeting's APOP timestamp."""
    found = re.search(rb"@([\w.-]+)>\r\n$", client.greeting)
    assert found, client.greeting
    return found.group(1).decode()


def test_two_nodes_share_the_lock_and_survive_a_kill(
    haproxy: StartHAProxy, tmp_path: Path, shared_store: SharedStore
) -> None:
    shared_store.deliver("alice", MESSAGES[:2])
    nodes = {name: start_node(tmp_path / name, name, shared_store) for name in ("a", "b")}
    # Mail delivered by LMTP to node a is served by whichever node HAProxy picks.
    lmtp_port = int(nodes["a"].log.wait_for(r"lmtp listening on 127\.0\.0\.1:(\d+)").group(1))
    with smtplib.LMTP("127.0.0.1", lmtp_port) as lmtp:
        assert lmtp.sendmail("sender@example.org", ["alice"], crlf(MESSAGES[2])) == {}
    port = free_port()
    backend = "    balance roundrobin\n    retries 3\n    option redispatch 1\n"
    backend += "    default-server send-proxy-v2 check inter 200ms fall 1 rise 1\n"
    backend += "".join(
        f"    server {name} 127.0.0.1:{node.proxy_ports['none']}\n" for name, node in nodes.items()
    )
    proxy = haproxy(tmp_path / "haproxy", one_backend(backend, f"127.0.0.1:{port}"), [port])
    first = RawClient(nodes["a"], port=port, source="127.0.0.2")
    holder = node_of(first)
    assert first.login("alice", "secret").startswith(b"+OK maildrop has 3 messages")
    first.send(b"UIDL\r\n")
    uidls = first.read_multiline()
    # Round robin: the next connection goes to the other node, where the lock holds too.
    second = RawClient(nodes["a"], port=port, source="127.0.0.3")
    other = node_of(second)
    assert other != holder
    assert second.login("alice", "secret") == (
        b"-ERR [IN-USE] maildrop is locked by another session\r\n"
    )
    nodes[other].log.wait_for(
        r"login failed user=alice client=127\.0\.0\.3 mechanism=USER reason=in-use"
    )
    # Kill the holder mid-session, after DELE and before QUIT.
    assert first.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    first.send(b"RETR 2\r\n")
    assert first.read_multiline().endswith(b"message 2\r\n.\r\n")
    first.send(b"RETR 3\r\n")
    assert first.read_multiline() == (
        b"+OK %d octets\r\n" % (len(LMTP_TRACE) + len(crlf(MESSAGES[2])))
        + LMTP_TRACE
        + crlf(MESSAGES[2])
        + b".\r\n"
    )
    nodes[holder].kill()
    assert first.read_until_closed() == b""
    proxy.log.wait_for(rf"Server popbox/{holder} is DOWN")
    again = RawClient(nodes["a"], port=port, source="127.0.0.2")
    assert node_of(again) == other
    # The lock died with the node; the DELE without QUIT removed nothing.
    assert again.login("alice", "secret").startswith(b"+OK maildrop has 3 messages")
    again.send(b"UIDL\r\n")
    assert again.read_multiline() == uidls
    assert again.command(b"QUIT").startswith(b"+OK")
    assert shared_store.stored("alice") == 3
    for node in nodes.values():
        no_line_names_the_proxy(node, health_checks=True)


# -- contrib/haproxy/haproxy.cfg ----------------------------------------------------------


def substitute(text: str, old: str, new: str) -> str:
    """Replace what must be in the example exactly once (so the test follows the file)."""
    assert text.count(old) == 1, f"{old!r} not exactly once in {CONTRIB}"
    return text.replace(old, new)


def test_the_contrib_example_config_runs_a_session(
    popbox: Starter, haproxy: StartHAProxy, tls_files: TlsFiles, tmp_path: Path
) -> None:
    extra = 'plaintext = "never"\n' + tls_files.toml + proxy_listener("starttls")
    server = popbox(USERS, MAIL, extra=extra)
    node = f"127.0.0.1:{server.proxy_ports['starttls']}"
    pop3, pop3s = free_port(), free_port()
    text = CONTRIB.read_text()
    text = substitute(text, "bind :110\n", f"bind 127.0.0.1:{pop3}\n")
    text = substitute(
        text,
        "bind :995 ssl crt /etc/haproxy/certs/mail.example.org.pem\n",
        f"bind 127.0.0.1:{pop3s} ssl crt {haproxy_pem(tls_files)}\n",
    )
    text = substitute(text, "192.0.2.11:1110", node)
    text = substitute(text, "192.0.2.12:1110", node)
    # Its log on stderr; health checks every 200 ms, so the test sees one soon.
    text = substitute(text, "log /dev/log local0", "log stderr format raw local0")
    text = substitute(text, "check inter 5s", "check inter 200ms")
    if os.geteuid() != 0:  # chroot and user switching need root (CI runs as root)
        text = re.sub(r"(?m)^    (chroot|user|group) .*\n", "", text)
    haproxy(tmp_path / "haproxy", text, [pop3, pop3s])
    context = tls_files.client_context()
    secure = RawClient(server, port=pop3s, source="127.0.0.2", tls=context)
    assert secure.login("alice", "secret").startswith(b"+OK maildrop has 3 messages")
    secure.send(b"RETR 3\r\n")
    assert secure.read_multiline().endswith(b"message 3\r\n.\r\n")
    assert secure.command(b"QUIT").startswith(b"+OK")
    plain = RawClient(server, port=pop3, source="127.0.0.3")
    assert plain.command(b"USER alice") == REFUSED
    assert plain.command(b"STLS") == b"+OK Begin TLS negotiation\r\n"
    plain.starttls(context)
    assert plain.login("alice", "secret").startswith(b"+OK maildrop has 3 messages")
    server.log.wait_for(r"login ok user=alice client=127\.0\.0\.2 mechanism=USER ")
    server.log.wait_for(r"login ok user=alice client=127\.0\.0\.3 mechanism=USER ")
    # The health check: a LOCAL header, the greeting, QUIT.
    server.log.wait_for(r"connect client=127\.0\.0\.1 proxy=127\.0\.0\.1 local$")
    server.log.wait_for(r"logout user=- client=127\.0\.0\.1 reason=quit ")
    no_line_names_the_proxy(server, health_checks=True)
