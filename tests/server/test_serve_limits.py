"""Bad input never kills the server or another session; memory stays bounded."""

from __future__ import annotations

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
    server = popbox(USERS)
    client = RawClient(server)
    garbage = b"".join(
        b"\x00" + bytes((j * 7 + i) % 256 for j in range(60)).replace(b"\n", b"") + b"\r\n"
        for i in range(25)
    )
    client.send(garbage)
    replies = b""
    while True:
        try:
            replies += client.read_line()
        except EOFError:
            break
    lines = replies.split(b"\r\n")[:-1]
    assert all(line.startswith(b"-ERR ") for line in lines)
    assert lines[-1] == b"-ERR too many bad commands, closing connection"
    assert len(lines) == 10  # [limits] max_bad_commands defaults to 10
    assert RawClient(server).greeting.startswith(b"+OK POP3 server ready <")


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
