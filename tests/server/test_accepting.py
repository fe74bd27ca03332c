"""The eager-accept listener (server/accepting.py), on real sockets: the kernel's accept
queue emptied at once, sessions started a few per loop turn with client addresses taken in
turn, a quiet address's connection started ahead of the rotation, reset connections closed
without a session, connections past max_waiting dropped, everything waiting closed on
close()."""

from __future__ import annotations

import asyncio
import collections
import itertools
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest

from popbox import pacing
from popbox.server import start_queue
from popbox.server.accepting import EagerAcceptServer
from popbox.server.start_queue import BUSY_PER_TURN, MAX_PACED, PER_TURN, QUIET


def busy(peer: str) -> int:
    """Every address already has sessions open: all of them wait in the rotation."""
    return QUIET


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def connect(sock: socket.socket, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """`count` clients from `source`, connected one after the other (the kernel queues
    them in order)."""
    return [
        socket.create_connection(sock.getsockname(), source_address=(source, 0))
        for _ in range(count)
    ]


class Recorder:
    """A starter that notes which client (by index) started in which loop turn."""

    def __init__(self, clients: list[socket.socket]) -> None:
        self.index = {client.getsockname(): n for n, client in enumerate(clients)}
        self.started: list[tuple[int, int]] = []
        self.turn = 0

    async def __call__(self, conn: socket.socket, peer: str) -> None:
        assert peer == conn.getpeername()[0]
        self.started.append((self.turn, self.index[conn.getpeername()]))
        conn.sendall(b"+OK\r\n")
        conn.close()


def each_received(clients: list[socket.socket], reply: bytes) -> None:
    """Each client got `reply` (b"" for closed unanswered); then it is closed."""
    for client in clients:
        assert client.recv(10) == reply
        client.close()


async def run_turns(recorder: Recorder | None, until: Callable[[], bool]) -> None:
    """Let the loop turn (counting turns in the recorder, if any) until `until()` holds."""
    for _ in range(1000):
        if until():
            return
        await asyncio.sleep(0)
        if recorder is not None:
            recorder.turn += 1
    raise AssertionError("not done in 1000 loop turns")


def serve_until(
    sock: socket.socket,
    recorder: Recorder,
    until: Callable[[EagerAcceptServer], bool],
    max_waiting: int,
    made: list[EagerAcceptServer] | None = None,
    **options: Any,
) -> None:
    """An EagerAcceptServer on `sock` until `until(server)` holds, then closed; appended
    to `made` first, for callbacks that look at it."""

    async def main() -> None:
        server = EagerAcceptServer(sock, recorder, max_waiting=lambda: max_waiting, **options)
        if made is not None:
            made.append(server)
        server.start_serving()
        await run_turns(recorder, lambda: until(server))
        server.close()
        server.close()  # idempotent
        await server.wait_closed()

    asyncio.run(main())


def test_backlog_starts_a_batch_a_turn_taking_addresses_in_turn() -> None:
    sock = listening()
    flood = connect(sock, 7, "127.0.0.2")  # clients 0-6
    honest = connect(sock, 1, "127.0.0.3")  # client 7, arriving after the flood
    more = connect(sock, 2, "127.0.0.4")  # clients 8-9
    clients = flood + honest + more
    recorder = Recorder(clients)

    serve_until(
        sock,
        recorder,
        lambda _: len(recorder.started) == 10,
        max_waiting=100,
        per_turn=3,
        open_from=busy,
    )
    order = [index for _, index in recorder.started]
    # One from each address in turn, oldest first within an address: the client from
    # 127.0.0.3 starts in the first batch, not after the seven of 127.0.0.2.
    assert order == [0, 7, 8, 1, 9, 2, 3, 4, 5, 6]
    turns = [turn for turn, _ in recorder.started]
    assert turns == sorted(turns) and len(set(turns)) == 4  # 3 + 3 + 3 + 1
    each_received(clients, b"+OK\r\n")


def test_a_few_connections_start_in_arrival_order_in_one_turn() -> None:
    sock = listening()
    clients = connect(sock, 3)
    recorder = Recorder(clients)

    serve_until(sock, recorder, lambda _: len(recorder.started) == 3, max_waiting=100, per_turn=4)
    assert [index for _, index in recorder.started] == [0, 1, 2]
    assert len({turn for turn, _ in recorder.started}) == 1
    for client in clients:
        client.close()


def test_the_kernel_queue_is_emptied_in_one_wake_up() -> None:
    sock = listening()
    clients = connect(sock, 100)
    recorder = Recorder(clients)

    accepted: list[int] = []

    def first_accept(server: EagerAcceptServer) -> bool:
        if server.waiting:
            accepted.append(server.waiting + len(recorder.started))
        return bool(accepted)

    serve_until(sock, recorder, first_accept, max_waiting=1000, per_turn=1)
    assert accepted == [100]
    for client in clients:
        client.close()


def test_past_max_waiting_the_flood_loses_its_oldest_not_the_newcomer() -> None:
    sock = listening()
    clients = connect(sock, 5, "127.0.0.2") + connect(sock, 1, "127.0.0.3")
    recorder = Recorder(clients)
    dropped: list[str] = []

    def four_started(_: EagerAcceptServer) -> bool:
        return len(recorder.started) == 4

    serve_until(
        sock,
        recorder,
        four_started,
        max_waiting=4,
        per_turn=8,
        on_dropped=dropped.append,
        open_from=busy,
    )
    # Room for 4 of 6: the two oldest of 127.0.0.2, the address with the most waiting,
    # are closed; the one client of 127.0.0.3 is kept.
    assert [index for _, index in recorder.started] == [2, 5, 3, 4]
    assert dropped == ["backlog", "backlog"]
    for n, client in enumerate(clients):
        client.settimeout(5)
        assert client.recv(10) == (b"" if n < 2 else b"+OK\r\n")
        client.close()


def test_a_quiet_address_starts_ahead_of_a_flood_from_many_addresses() -> None:
    sock = listening()
    # A botnet: 8 addresses with 4 connections each, every address with sessions open.
    flood = [c for n in range(8) for c in connect(sock, 4, f"127.0.1.{n + 1}")]
    quiet = connect(sock, 2, "127.0.0.3")  # arrives last; nothing open from there
    clients = flood + quiet
    recorder = Recorder(clients)
    quiet_address = "127.0.0.3"

    def open_from(peer: str) -> int:
        return 0 if peer == quiet_address else 5

    counted: list[tuple[int, int, int]] = []

    def all_started(server: EagerAcceptServer) -> bool:
        if not counted and server.waiting:
            counted.append(
                (
                    server.waiting_from("127.0.1.1"),
                    server.waiting_from(quiet_address),
                    server.waiting_from("127.0.9.9"),
                )
            )
        return len(recorder.started) == len(clients)

    serve_until(sock, recorder, all_started, max_waiting=100, per_turn=1, open_from=open_from)
    # Before any start: each address's waiting connections, the express one included.
    assert counted == [(4, 2, 0)]
    order = [index for _, index in recorder.started]
    # The quiet address's first connection starts first, ahead of the 32 flood
    # connections that arrived before it. Its second waits in the rotation like any
    # other: one express connection per address.
    assert order[:2] == [32, 0]
    assert order.index(33) > 8
    turns = [turn for turn, _ in recorder.started]
    assert len(set(turns)) == len(clients)  # one start per turn
    each_received(clients, b"+OK\r\n")


@pytest.mark.parametrize("quiet_client_served", [False, True])
def test_one_flood_start_a_turn_while_a_quiet_client_is_served(
    quiet_client_served: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pacing, "_PACER", pacing.Pacer())  # no client served yet
    monkeypatch.setattr(start_queue, "BUSY_START_EVERY", 0.0)  # turns, not time, here
    if quiet_client_served:
        pacing.foreground()
    sock = listening()
    flood = connect(sock, PER_TURN, "127.0.0.2")  # clients 0-15: a busy address
    others = connect(sock, PER_TURN, "127.0.0.3")  # clients 16-31: not busy
    clients = flood + others
    recorder = Recorder(clients)

    serve_until(  # the limits `popbox serve` has
        sock,
        recorder,
        lambda _: len(recorder.started) == len(clients),
        max_waiting=100,
        open_from=busy,
        busy=lambda peer: peer == "127.0.0.2",
    )
    turns: dict[int, list[int]] = collections.defaultdict(list)
    for turn, index in recorder.started:
        turns[turn].append(index)
    batches = list(turns.values())
    if quiet_client_served:
        # Addresses in turn; a turn ends before a second flood start.
        assert batches[:3] == [[0, 16], [1, 17], [2, 18]]
        assert all(sum(index < PER_TURN for index in batch) <= BUSY_PER_TURN for batch in batches)
        assert len(batches) == PER_TURN
    else:
        assert batches == [
            [n + offset for n in range(PER_TURN // 2) for offset in (0, PER_TURN)],
            [n + offset for n in range(PER_TURN // 2, PER_TURN) for offset in (0, PER_TURN)],
        ]
    each_received(clients, b"+OK\r\n")


def test_a_flood_whose_first_connections_went_express_does_not_hold_a_quiet_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A botnet's addresses had nothing open: each one's first connection came to the
    express line, its others behind it in the rotation. Once they are busy, those first
    connections are the flood's like the others, and a quiet client that came after
    them starts first while a quiet client is served (starts of busy addresses paced)."""
    monkeypatch.setattr(pacing, "_PACER", pacing.Pacer())
    monkeypatch.setattr(start_queue, "BUSY_START_EVERY", 0.0)
    pacing.foreground()
    sock = listening()
    flood = [c for n in range(8) for c in connect(sock, 4, f"127.0.1.{n + 1}")]
    quiet = connect(sock, 1, "127.0.0.3")  # client 32
    clients = flood + quiet
    recorder = Recorder(clients)
    servers: list[EagerAcceptServer] = []

    def flooding(peer: str) -> bool:  # ServerContext.busy with BUSY = 3, nothing open
        return servers[0].waiting_from(peer) >= 3

    def everyone(_: EagerAcceptServer) -> bool:
        return len(recorder.started) == len(clients)

    serve_until(sock, recorder, everyone, max_waiting=100, made=servers, busy=flooding)
    order = [index for _, index in recorder.started]
    assert order[0] == 32, order
    # Each flood address's connections start oldest first, its express one included.
    for n in range(8):
        mine = [index for index in order if 4 * n <= index < 4 * n + 4]
        assert mine == [4 * n, 4 * n + 1, 4 * n + 2, 4 * n + 3], order
    each_received(clients, b"+OK\r\n")


def backed_up_server(
    sock: socket.socket, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, backlog: list[int]
) -> EagerAcceptServer:
    """A server whose pacer has `backlog[0]` steps waiting, a quiet client being served,
    and 127.0.0.2 as its one busy address."""
    monkeypatch.setattr(pacing, "_PACER", pacing.Pacer())
    pacing.foreground()
    monkeypatch.setattr(pacing, "waiting", lambda: backlog[0])
    return EagerAcceptServer(
        sock,
        recorder,
        max_waiting=lambda: 100,
        open_from=lambda peer: QUIET if peer == "127.0.0.2" else 0,
        busy=lambda peer: peer == "127.0.0.2",
    )


def test_few_flood_starts_while_background_work_is_backed_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each started flood session is work for the pacer (pacing.py); past MAX_PACED
    steps waiting, the flood's connections mostly stay unstarted (a socket each, not a
    session the garbage collector must walk), and quiet clients still start."""
    monkeypatch.setattr(start_queue, "BACKED_UP_START_EVERY", 60.0)
    monkeypatch.setattr(start_queue, "BUSY_START_EVERY", 0.0)
    backlog = [MAX_PACED]
    sock = listening()
    flood = connect(sock, 4, "127.0.0.2")  # clients 0-3, a busy address
    quiet = [c for n in range(2) for c in connect(sock, 1, f"127.0.2.{n + 1}")]  # 4, 5
    clients = flood + quiet
    recorder = Recorder(clients)
    waiting: list[int] = []

    async def main() -> None:
        server = backed_up_server(sock, recorder, monkeypatch, backlog)
        server.start_serving()
        await run_turns(recorder, lambda: len(recorder.started) == 3)
        for _ in range(20):  # the backlog stays: one flood start a minute
            await asyncio.sleep(0)
        waiting.append(server.waiting)
        backlog[0] = MAX_PACED - 1
        await run_turns(recorder, lambda: len(recorder.started) == len(clients))
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert waiting == [3]
    assert [index for _, index in recorder.started] == [4, 0, 5, 1, 2, 3]
    each_received(clients, b"+OK\r\n")


@pytest.mark.parametrize("quiet_client_served", [False, True])
def test_flood_starts_are_spaced_while_a_quiet_client_is_served(
    quiet_client_served: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy address's sessions start BUSY_START_EVERY apart while a quiet client is
    being served, quiet ones at once; with no quiet client served, all at once."""
    monkeypatch.setattr(start_queue, "BUSY_START_EVERY", 0.02)
    monkeypatch.setattr(pacing, "_PACER", pacing.Pacer())
    if quiet_client_served:
        pacing.foreground()
    sock = listening()
    flood = connect(sock, 4, "127.0.0.2")  # clients 0-3, a busy address
    quiet = [c for n in range(2) for c in connect(sock, 1, f"127.0.2.{n + 1}")]  # 4, 5
    clients = flood + quiet
    recorder = Recorder(clients)
    started_at: dict[int, float] = {}

    async def main() -> None:
        server = EagerAcceptServer(
            sock,
            recorder,
            max_waiting=lambda: 100,
            open_from=lambda peer: QUIET if peer == "127.0.0.2" else 0,
            busy=lambda peer: peer == "127.0.0.2",
        )
        server.start_serving()
        loop = asyncio.get_running_loop()
        began, deadline = loop.time(), loop.time() + 10
        while len(recorder.started) < len(clients) and loop.time() < deadline:
            await asyncio.sleep(0.001)
            for _, index in recorder.started:
                started_at.setdefault(index, loop.time() - began)
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert sorted(index for _, index in recorder.started) == list(range(len(clients)))
    flood_times = [started_at[index] for index in range(4)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(flood_times)]
    if quiet_client_served:
        assert all(gap >= 0.018 for gap in gaps), gaps
        assert max(started_at[4], started_at[5]) < 0.018, started_at
    else:
        assert flood_times[-1] < 0.018, started_at
    each_received(clients, b"+OK\r\n")


def test_a_backlog_that_lasts_slows_a_busy_address_down_but_never_stops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many users behind one NAT are a busy address too: their sessions start every
    BACKED_UP_START_EVERY while the pacer stays backed up."""
    monkeypatch.setattr(start_queue, "BACKED_UP_START_EVERY", 0.05)
    sock = listening()
    clients = connect(sock, 4, "127.0.0.2")
    recorder = Recorder(clients)
    started_at: list[float] = []

    async def main() -> None:
        server = backed_up_server(sock, recorder, monkeypatch, [MAX_PACED * 10])
        server.start_serving()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(recorder.started) < len(clients) and loop.time() < deadline:
            count = len(recorder.started)
            await asyncio.sleep(0.001)
            started_at.extend(loop.time() for _ in range(len(recorder.started) - count))
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert [index for _, index in recorder.started] == [0, 1, 2, 3]
    gaps = [later - earlier for earlier, later in itertools.pairwise(started_at)]
    assert all(gap >= 0.045 for gap in gaps), gaps
    each_received(clients, b"+OK\r\n")


def test_what_waits_is_reported_after_each_turn_and_at_close() -> None:
    sock = listening()
    clients = connect(sock, 5)
    recorder = Recorder(clients)
    reported: list[tuple[int, int]] = []  # (turn, waiting) at each on_waiting()
    servers: list[EagerAcceptServer] = []

    def on_waiting() -> None:
        reported.append((recorder.turn, servers[0].waiting))

    def everyone(_: EagerAcceptServer) -> bool:
        return len(recorder.started) == len(clients)

    serve_until(
        sock, recorder, everyone, max_waiting=100, made=servers, per_turn=2, on_waiting=on_waiting
    )
    # Two starts a turn, one report a turn, and the last at close.
    assert [waiting for _, waiting in reported] == [3, 1, 0, 0], reported
    assert len({turn for turn, _ in reported}) == 4
    each_received(clients, b"+OK\r\n")


def test_quiet_and_rotation_take_turns_so_neither_starves() -> None:
    sock = listening()
    rotation = connect(sock, 3, "127.0.0.2")  # one address with sessions open
    quiet = [c for n in range(3) for c in connect(sock, 1, f"127.0.2.{n + 1}")]
    clients = rotation + quiet
    recorder = Recorder(clients)

    def open_from(peer: str) -> int:
        return 5 if peer == "127.0.0.2" else 0

    serve_until(
        sock,
        recorder,
        lambda _: len(recorder.started) == 6,
        max_waiting=100,
        per_turn=1,
        open_from=open_from,
    )
    assert [index for _, index in recorder.started] == [3, 0, 4, 1, 5, 2]
    for client in clients:
        client.close()


def reset(client: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a scanner or an impatient client does."""
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def test_a_connection_in_its_start_counts_as_waiting() -> None:
    """A TLS handshake is part of the start: the address's connection still counts
    (ServerContext.busy) until the session is open."""
    sock = listening()
    clients = connect(sock, 2, "127.0.0.2")
    counts: list[int] = []

    async def main() -> None:
        handshake = asyncio.Event()
        starting: list[socket.socket] = []

        async def start(conn: socket.socket, peer: str) -> None:
            starting.append(conn)
            await handshake.wait()
            conn.close()

        server = EagerAcceptServer(sock, start, max_waiting=lambda: 100)
        server.start_serving()
        await run_turns(None, lambda: len(starting) == len(clients))
        counts.extend((server.waiting, server.waiting_from("127.0.0.2")))
        handshake.set()
        for _ in range(5):
            await asyncio.sleep(0)
        counts.append(server.waiting_from("127.0.0.2"))
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert counts == [0, 2, 0]
    each_received(clients, b"")


def test_reset_connections_are_closed_without_a_session() -> None:
    sock = listening()
    clients = connect(sock, 6)
    recorder = Recorder(clients)
    clients[1].sendall(b"USER a\r\nPASS b\r\n")
    clients[1].shutdown(socket.SHUT_WR)  # half-closed after its commands: still served
    for n in (0, 2, 4):
        reset(clients[n])
    dropped: list[str] = []

    serve_until(
        sock,
        recorder,
        lambda server: len(recorder.started) == 3 and not server.waiting,
        max_waiting=100,
        per_turn=1,
        on_dropped=dropped.append,
    )
    assert [index for _, index in recorder.started] == [1, 3, 5]
    assert dropped == ["reset", "reset", "reset"]
    for n in (1, 3, 5):
        assert clients[n].recv(10) == b"+OK\r\n"
        clients[n].close()


def test_past_max_waiting_with_every_address_quiet_the_oldest_goes() -> None:
    sock = listening()
    clients = [c for n in range(4) for c in connect(sock, 1, f"127.0.3.{n + 1}")]
    recorder = Recorder(clients)
    dropped: list[str] = []

    serve_until(
        sock,
        recorder,
        lambda _: len(recorder.started) == 3,
        max_waiting=3,
        per_turn=4,
        on_dropped=dropped.append,
    )
    assert [index for _, index in recorder.started] == [1, 2, 3]
    assert dropped == ["backlog"]
    clients[0].settimeout(5)
    assert clients[0].recv(10) == b""
    for client in clients:
        client.close()


def test_close_stops_accepting_and_closes_what_waits() -> None:
    sock = listening()
    address = sock.getsockname()
    clients = connect(sock, 6)
    recorder = Recorder(clients)

    serve_until(sock, recorder, lambda _: len(recorder.started) == 2, max_waiting=100, per_turn=2)
    started = [index for _, index in recorder.started]
    assert started[:2] == [0, 1] and len(started) < 6  # not all of them
    for n, client in enumerate(clients):
        client.settimeout(5)
        assert client.recv(10) == (b"+OK\r\n" if n in started else b"")
        client.close()
    assert sock.fileno() == -1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5)
