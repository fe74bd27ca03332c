"""Bad input never kills the server or another session; memory stays bounded."""

from __future__ import annotations

import itertools
import os
import socket
import time

from conftest import Starter

from server_helpers import RawClient, crlf, rss_kib

USERS = {"alice": "{PLAIN}secret", "bob": "{PLAIN}bob"}


def test_endless_line_gets_err_and_memory_stays_bounded(popbox: Starter) -> None:
    server = popbox(USERS, {"bob": [b"Subject: hi\r\n\r\nhi\r\n"]})
    flood = RawClient(server)
    flood.send(b"X" * 300)
    assert flood.read_line() == b"-ERR line too long (limit 255 octets)\r\n"
    baseline = rss_kib(server.process.pid)
    chunk = b"Y" * (1 << 20)
    for _ in range(20):  # 20 MB without a line end
        flood.send(chunk)
    # Another session is served meanwhile, and the flooding one is still usable.
    other = RawClient(server)
    assert other.login("bob", "bob").startswith(b"+OK maildrop has 1 messages")
    assert flood.command(b"\r\nNOOP") == b"-ERR NOOP not allowed in AUTHORIZATION state\r\n"
    assert rss_kib(server.process.pid) - baseline < 10_000


def trickle(client: RawClient, data: bytes) -> None:
    """One octet per TCP segment (no Nagle), as a slow or hostile client sends."""
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for octet in data:
        client.send(bytes([octet]))
        time.sleep(0.001)


def test_commands_trickled_an_octet_at_a_time(popbox: Starter) -> None:
    """The session is woken by a line end, not by every octet: the replies are the same."""
    message = b"Subject: hi\r\n\r\nhi\r\n"
    server = popbox(USERS, {"bob": [message]})
    client = RawClient(server)
    trickle(client, b"USER bob\r")
    client.sock.settimeout(0.3)
    try:  # half a line: no reply yet
        early = client.sock.recv(100)
    except TimeoutError:
        early = b""
    assert early == b""
    client.sock.settimeout(10)
    trickle(client, b"\nPASS bob\r\nST")
    assert client.read_line() == b"+OK send PASS\r\n"
    assert client.read_line().startswith(b"+OK maildrop has 1 messages")
    trickle(client, b"AT\r\n" + b"Z" * 300)  # then a line that cannot end in time
    assert client.read_line() == b"+OK 1 %d\r\n" % len(crlf(message))
    assert client.read_line() == b"-ERR line too long (limit 255 octets)\r\n"
    assert client.command(b"\r\nNOOP") == b"+OK\r\n"


def test_binary_garbage_and_too_many_bad_commands(popbox: Starter) -> None:
    """max_bad_commands (10) bad commands in a row close the session; from the 6th on,
    past half of them, each -ERR waits bad_command_delay."""
    server = popbox(USERS, extra="[limits]\nbad_command_delay = 0.25\n")
    client = RawClient(server)
    garbage = b"".join(
        b"\x00" + bytes((j * 7 + i) % 256 for j in range(60)).replace(b"\n", b"") + b"\r\n"
        for i in range(25)
    )
    sent = time.monotonic()
    client.send(garbage)
    lines: list[bytes] = []
    at: list[float] = []
    while True:
        try:
            lines.append(client.read_line())
        except EOFError:
            break
        at.append(time.monotonic() - sent)
    assert lines == [b"-ERR control characters are not allowed in commands\r\n"] * 9 + [
        b"-ERR too many bad commands, closing connection\r\n"
    ]
    assert at[4] < 0.25  # the first five at once
    waits = [later - earlier for earlier, later in itertools.pairwise(at[4:])]
    assert all(0.24 <= wait < 1.0 for wait in waits), waits
    assert RawClient(server).greeting.startswith(b"+OK POP3 server ready <")


def test_a_good_command_ends_a_run_of_bad_ones(popbox: Starter) -> None:
    server = popbox(USERS, extra="[limits]\nmax_bad_commands = 6\nbad_command_delay = 0.5\n")
    client = RawClient(server)
    unknown = b"-ERR unknown command\r\n"
    started = time.monotonic()
    client.send(b"BAD1\r\nBAD2\r\nBAD3\r\n")
    assert [client.read_line() for _ in range(3)] == [unknown] * 3
    assert time.monotonic() - started < 0.5
    assert client.command(b"BAD4") == unknown  # past half of max_bad_commands: it waits
    assert time.monotonic() - started >= 0.5
    started = time.monotonic()
    client.send(b"CAPA\r\n")  # a good command: the run is over
    assert client.read_multiline().startswith(b"+OK")
    assert [client.command(b"BAD%d" % n) for n in (5, 6, 7)] == [unknown] * 3
    assert time.monotonic() - started < 0.5


def test_client_that_never_reads_its_retr_output(popbox: Starter) -> None:
    big = b"Subject: big\r\n\r\n" + (b"z" * 76 + b"\r\n") * 400_000  # about 31 MB
    server = popbox(USERS, {"alice": [big], "bob": [b"Subject: b\r\n\r\nb\r\n"]})
    stalled = RawClient(server)
    stalled.login("alice", "secret")
    baseline = rss_kib(server.process.pid)
    stalled.send(b"RETR 1\r\n")
    # While it does not read, others are served and the server does not buffer the message.
    for _ in range(5):
        other = RawClient(server)
        assert other.login("bob", "bob").startswith(b"+OK")
        assert other.command(b"QUIT").startswith(b"+OK")
    assert rss_kib(server.process.pid) - baseline < 8_000
    # Now it reads: the whole message arrives, exact.
    expected = b"+OK %d octets\r\n%s.\r\n" % (len(crlf(big)), crlf(big))
    assert stalled.read_multiline() == expected


def test_hundred_megabyte_message_streams(popbox: Starter) -> None:
    line = b"0123456789" * 9 + b"\n"  # LF line ends: the server converts every block
    big = b"Subject: huge\n\n" + line * 1_100_000  # about 100 MB
    server = popbox(USERS, {"alice": [big]})
    client = RawClient(server, timeout=60)
    client.login("alice", "secret")
    size = len(big) + big.count(b"\n")
    assert client.command(b"LIST 1") == b"+OK 1 %d\r\n" % size
    client.send(b"RETR 1\r\n")
    assert client.read_line() == b"+OK %d octets\r\n" % size
    received, peak = len(client.buffer), 0
    tail = client.buffer[-5:]
    while True:
        chunk = client.sock.recv(1 << 20)
        assert chunk
        received += len(chunk)
        tail = (tail + chunk)[-5:]
        peak = max(peak, rss_kib(server.process.pid))
        if tail == b"\r\n.\r\n":
            break
    assert received == size + 3
    assert peak < 80_000, f"server RSS peaked at {peak} KiB"
    assert os.path.getsize(next((server.maildir("alice") / "new").iterdir())) == len(big)


def test_a_client_gone_during_the_delay_ends_its_session_at_once(popbox: Starter) -> None:
    extra = "[limits]\nmax_bad_commands = 20\nbad_command_delay = 60\n"
    server = popbox(USERS, extra=extra)
    client = RawClient(server)
    client.send(b"".join(b"BAD%d\r\n" % n for n in range(15)))  # the 11th waits a minute
    assert [client.read_line() for _ in range(10)] == [b"-ERR unknown command\r\n"] * 10
    client.close()
    server.log.wait_for(r"logout user=- .*reason=disconnected", timeout=10)
