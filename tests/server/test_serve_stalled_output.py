"""Clients that stop reading, or leave, in the middle of a RETR (issue 7, item 4), against
the real `popbox serve`: RFC 1939 section 3's autologout timer runs while a reply waits
for the client to read it, and the client's doing is never counted as the store's."""

from __future__ import annotations

import os
import socket
import struct
import time

from conftest import Starter
from test_serve_metrics import scrape, value

from server_helpers import PopboxServer, RawClient, crlf

USERS = {"alice": "{PLAIN}secret"}
# Bigger than what the kernel buffers between the two ends on loopback (the server's send
# buffer grows to net.ipv4.tcp_wmem's maximum, 4 MiB by default; the client's receive
# buffer is set small below): the RETR stalls with most of the message unsent.
BIG = b"Subject: big\r\n\r\n" + (b"b" * 998 + b"\r\n") * 12_000  # 12 MB
SMALL = b"Subject: small\r\n\r\nsmall\r\n"
METRICS = '[metrics]\naddress = "127.0.0.1"\nport = 0\n'


def stalled_retr(server: PopboxServer) -> socket.socket:
    """Log in and RETR 1 (BIG) with a 16 KiB receive buffer; read nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connect: the window
    sock.connect((server.host, server.port))
    sock.sendall(b"USER alice\r\nPASS secret\r\nRETR 1\r\n")
    return sock


def read_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything until the connection ends (closed or reset)."""
    sock.settimeout(timeout)
    received = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            received += chunk
    except ConnectionResetError:
        pass
    return bytes(received)


def test_a_client_that_stops_reading_a_retr_is_logged_out_without_update(
    popbox: Starter,
) -> None:
    server = popbox(USERS, {"alice": [BIG, SMALL]}, idle_timeout=1, extra=METRICS)
    names = sorted(os.listdir(server.maildir("alice") / "new"))
    stalled = stalled_retr(server)
    started = time.monotonic()
    server.log.wait_for(r"autologout user=alice client=127\.0\.0\.1 output=unread")
    assert time.monotonic() - started >= 0.9
    server.log.wait_for(r"logout user=alice client=127\.0\.0\.1 reason=autologout ")
    # The lock is free at once, and nothing was deleted: no UPDATE (RFC 1939 section 3).
    client = RawClient(server)
    assert client.login("alice", "secret") == b"+OK maildrop has 2 messages (%d octets)\r\n" % (
        len(crlf(BIG)) + len(crlf(SMALL))
    )
    assert client.command(b"QUIT") == b"+OK POP3 server signing off (2 messages left)\r\n"
    assert sorted(os.listdir(server.maildir("alice") / "new")) == names
    # The stalled client gets what the kernels held, then the end of the connection: never
    # the whole message, never the reply's end.
    received = read_all(stalled, timeout=10)
    stalled.close()
    greeting, _, rest = received.partition(b"\r\n")
    assert greeting.startswith(b"+OK POP3 server ready <")
    retr_status = b"+OK %d octets\r\n" % len(crlf(BIG))
    assert rest.startswith(b"+OK send PASS\r\n+OK maildrop has 2 messages")
    body = rest[rest.index(retr_status) + len(retr_status) :]
    assert 0 < len(body) < len(crlf(BIG)) // 2
    assert crlf(BIG).startswith(body)
    # A client's doing, not the store's.
    after = scrape(server)
    assert not [key for key in after if key[0] == "popbox_store_errors_total"]
    assert value(after, "popbox_messages_retrieved_total") == 0
    assert not [line for line in server.log.lines if "read failed" in line]


def test_a_client_that_leaves_during_a_retr_is_no_store_error(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": [BIG, SMALL]}, extra=METRICS)
    stalled = stalled_retr(server)
    server.log.wait_for(r"login ok user=alice")
    time.sleep(0.2)  # the reply fills the buffers
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    stalled.close()
    server.log.wait_for(r"logout user=alice client=127\.0\.0\.1 reason=disconnected ")
    after = scrape(server)
    assert not [key for key in after if key[0] == "popbox_store_errors_total"]
    assert not [line for line in server.log.lines if "read failed" in line]
    client = RawClient(server)
    assert client.login("alice", "secret").startswith(b"+OK maildrop has 2 messages")
