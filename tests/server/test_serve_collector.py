"""`popbox serve` runs its full garbage collections at quiet moments (server/collector.py):
none while a quiet client is being served, one soon after it stops.

Held connections make the server's young garbage-collection passes (their objects live
through them and grow old), as a flood does; the counts come from the server's own
metrics (prometheus-client's python_gc_collections_total, by generation).
"""

from __future__ import annotations

import socket
import time

from conftest import Starter
from test_serve_metrics import scrape, value

from popbox.pacing import FOREGROUND_WINDOW
from popbox.server.collector import CHECK_EVERY, FULL_AFTER
from server_helpers import PopboxServer, RawClient

BATCH = 50  # connections held at a time, from one loopback address each round


def passes(server: PopboxServer, generation: int) -> float:
    return value(scrape(server), "python_gc_collections_total", generation=str(generation))


def hold_and_release(server: PopboxServer, round_: int) -> None:
    """BATCH connections opened, greeted and closed, from 127.0.<round>.1."""
    source = f"127.0.{1 + round_ % 250}.1"
    held = [
        socket.create_connection((server.host, server.port), timeout=10, source_address=(source, 0))
        for _ in range(BATCH)
    ]
    for sock in held:
        assert sock.recv(100).startswith(b"+OK")
    for sock in held:
        sock.close()


def test_no_full_collection_while_a_quiet_client_is_served_one_after(popbox: Starter) -> None:
    server = popbox(
        {"alice": "{PLAIN}secret"},
        {"alice": [b"Subject: hi\r\n\r\nhello\r\n"]},
        extra='[metrics]\naddress = "127.0.0.1"\nport = 0\n',
    )
    client = RawClient(server)
    assert client.login("alice", "secret").startswith(b"+OK")
    full_before = passes(server, 2)
    middle_before = passes(server, 1)

    # Enough young passes for a full one to be due (FULL_AFTER), and a few more, while
    # the quiet client sends a command at least every FOREGROUND_WINDOW.
    round_ = 0
    deadline = time.monotonic() + 60
    while passes(server, 1) < middle_before + FULL_AFTER + 3:
        assert time.monotonic() < deadline, "the held connections made no young passes"
        hold_and_release(server, round_)
        round_ += 1
        assert client.command(b"NOOP") == b"+OK\r\n"
    # Checks come every CHECK_EVERY seconds: give the server two while still served.
    until = time.monotonic() + 2 * CHECK_EVERY
    while time.monotonic() < until:
        assert client.command(b"NOOP") == b"+OK\r\n"
        time.sleep(FOREGROUND_WINDOW / 5)
    assert passes(server, 2) == full_before

    # Quiet: the due full pass runs within a check or two.
    deadline = time.monotonic() + FOREGROUND_WINDOW + 5 * CHECK_EVERY
    while passes(server, 2) == full_before:
        assert time.monotonic() < deadline, "no full collection once the client was quiet"
        time.sleep(0.1)
    assert passes(server, 2) == full_before + 1
    assert client.command(b"QUIT") == b"+OK POP3 server signing off (1 messages left)\r\n"
