"""A hostile load generator for tests/server/test_hostile_clients.py (issue 7, item 4).

Run as its own process, so that its event loop does not share a core's time slices with
the honest client the test measures:

    python tests/hostile_load.py --port P --slow 1000 --burst 5000 ...

Every attack runs at the same time, until SIGTERM:

- slow: connections that send one byte a second, forever (half of them a CAPA command
  now and then, which is legal and answered, half a line that never ends);
- long-lines: connections that send 10 MB without CRLF (at 10 MB/s each), then close and
  start again;
- stalled: logins that ask for a big message (RETR 1) and never read the reply;
- burst: waves of connects all at once that close, reset (RST) or send garbage first;
- binary: logins followed by random binary, again each time the server closes.

Attackers come from several loopback addresses (127.0.N.x, `--net N`), as a botnet would,
so the server's per-address limit (max_connections_per_ip) is kept as an admin sets it.
Progress goes to stdout as JSON lines: {"ready": ...} once every slow connection is open
and every stalled RETR is sent, {"stats": ...} every second, {"stopped": ...} at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import socket
import struct
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

# Each attack's connections come from their own block of loopback addresses, at most this
# many per address: below the server's default max_connections_per_ip (100).
PER_ADDRESS = 50
TEN_MB = 10 * 1024 * 1024
# A 10 MB line goes out in blocks of LINE_BLOCK, at LINE_RATE octets a second per client.
LINE_BLOCK = 256 * 1024
LINE_RATE = 10 * 1024 * 1024


@dataclass
class Stats:
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n


class Sink(asyncio.Protocol):
    """A connection that discards what it receives (or stops reading: `stall`) and
    respects flow control on what it sends."""

    def __init__(self, *, stall: bool = False) -> None:
        self.transport: asyncio.Transport | None = None
        self.stall = stall
        self.received = bytearray()  # only up to the first CRLF pair kept, for logins
        self.received_octets = 0
        self.lost = asyncio.get_running_loop().create_future()
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No pause_reading() here for `stall`: uvloop starts reading after this returns,
        # whatever it was told (Attack.connect() pauses instead).
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_octets += len(data)
        if len(self.received) < 4096:
            self.received += data[: 4096 - len(self.received)]

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    @property
    def closed(self) -> bool:
        return self.lost.done()

    async def write(self, data: bytes) -> bool:
        """Send with backpressure; False once the connection is gone."""
        if self.closed or self.transport is None:
            return False
        self.transport.write(data)
        await self.writable.wait()
        return not self.closed

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Attack:
    def __init__(self, args: argparse.Namespace, stats: Stats) -> None:
        self.args = args
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        self.stopping = False

    def source(self, block: int, n: int) -> str:
        """The n-th connection's address in the attack's block of addresses."""
        address = n // PER_ADDRESS
        return f"127.{self.args.net + block}.{address // 250}.{address % 250 + 1}"

    async def connect(self, block: int, n: int, *, stall: bool = False) -> Sink | None:
        host = self.source(block, n)
        try:
            _, sink = await self.loop.create_connection(
                lambda: Sink(stall=stall),
                self.args.host,
                self.args.port,
                local_addr=(host, 0),
            )
        except OSError as error:
            self.stats.add(f"connect_error_{type(error).__name__}")
            return None
        if stall and sink.transport is not None:
            sink.transport.pause_reading()
        return sink

    async def forever(self, name: str, one: Callable[[], Awaitable[None]]) -> None:
        while not self.stopping:
            try:
                await one()
            except OSError:
                self.stats.add(f"{name}_error")
                await asyncio.sleep(0.1)

    # -- the attacks ------------------------------------------------------------------

    async def slow(self, n: int, opened: asyncio.Event, count: list[int]) -> None:
        """One byte a second; reconnect when closed. Even n: `CAPA\\r\\n` over and over
        (legal, so never closed for bad commands); odd n: a line that never ends."""
        pattern = b"CAPA\r\n" if n % 2 == 0 else b"X"
        first = True
        while not self.stopping:
            sink = await self.connect(0, n)
            if sink is None:
                await asyncio.sleep(1)
                continue
            if first:
                first = False
                count[0] += 1
                if count[0] == self.args.slow:
                    opened.set()
            self.stats.add("slow_connects")
            i = 0
            while not self.stopping and not sink.closed:
                await asyncio.sleep(1 + random.random() * 0.01)
                await sink.write(pattern[i % len(pattern) : i % len(pattern) + 1])
                self.stats.add("slow_bytes")
                i += 1
            self.stats.add("slow_closed_by_server")

    async def long_line(self, n: int) -> None:
        sink = await self.connect(1, n)
        if sink is None:
            await asyncio.sleep(0.5)
            return
        self.stats.add("long_line_connects")
        sent = 0
        block = b"A" * LINE_BLOCK
        started = self.loop.time()
        while sent < TEN_MB and await sink.write(block):
            sent += len(block)
            # At most LINE_RATE: one client's flood, not all the loopback's bandwidth
            # (which would only measure who gets the CPU, this process or popbox).
            await asyncio.sleep(max(0.0, started + sent / LINE_RATE - self.loop.time()))
        self.stats.add("long_line_octets", sent)
        if sent >= TEN_MB:
            self.stats.add("long_lines_sent")
        sink.abort()

    async def stalled(self, user: str, n: int, sent: asyncio.Event, count: list[int]) -> None:
        """Log in, RETR the big message 1, never read; hold the connection open."""
        sink = await self.connect(2, n, stall=True)
        if sink is None:
            raise OSError("stalled client could not connect")
        await sink.write(b"USER %s\r\nPASS %s\r\nRETR 1\r\n" % (user.encode(), b"pw"))
        count[0] += 1
        if count[0] == len(self.args.stalled):
            sent.set()
        self.stats.add("stalled_retr")
        await sink.lost
        self.stats.add("stalled_closed_by_server")

    async def burst_one(self, n: int, rng: random.Random) -> None:
        sink = await self.connect(3, n)
        if sink is None:
            return
        self.stats.add("burst_connects")
        kind = rng.randrange(3)
        if kind == 0:  # a reset: SO_LINGER 0, then close
            sock = sink.transport.get_extra_info("socket") if sink.transport else None
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sink.abort()
        elif kind == 1:
            await sink.write(rng.randbytes(rng.randrange(1, 2000)))
            sink.transport.close()  # type: ignore[union-attr]
        else:
            sink.transport.close()  # type: ignore[union-attr]

    async def bursts(self) -> None:
        rng = random.Random(self.args.seed)
        while not self.stopping:
            await asyncio.gather(
                *(self.burst_one(n, rng) for n in range(self.args.burst)),
                return_exceptions=True,
            )
            self.stats.add("bursts")
            await asyncio.sleep(self.args.burst_pause)

    async def binary(self, user: str, n: int, rng: random.Random) -> None:
        sink = await self.connect(4, n)
        if sink is None:
            await asyncio.sleep(0.5)
            return
        self.stats.add("binary_sessions")
        await sink.write(b"USER %s\r\nPASS pw\r\n" % user.encode())
        while not sink.closed and b"maildrop has" not in sink.received:
            if b"-ERR" in sink.received:  # e.g. [IN-USE] while the old session ends
                sink.abort()
                await asyncio.sleep(0.1)
                return
            await asyncio.sleep(0.01)
        while not self.stopping and await sink.write(rng.randbytes(rng.randrange(1, 4096))):
            self.stats.add("binary_chunks")
            await asyncio.sleep(0.01)
        sink.abort()


async def main(args: argparse.Namespace) -> None:
    stats = Stats()
    attack = Attack(args, stats)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    opened, retr_sent = asyncio.Event(), asyncio.Event()
    slow_count, stalled_count = [0], [0]
    if not args.slow:
        opened.set()
    if not args.stalled:
        retr_sent.set()
    tasks = [
        *(loop.create_task(attack.slow(n, opened, slow_count)) for n in range(args.slow)),
        *(
            loop.create_task(attack.stalled(user, n, retr_sent, stalled_count))
            for n, user in enumerate(args.stalled)
        ),
    ]
    await asyncio.wait_for(asyncio.gather(opened.wait(), retr_sent.wait()), 120)
    print(json.dumps({"ready": dict(stats.counts)}), flush=True)
    rng = random.Random(args.seed)
    for n in range(args.long_lines):
        tasks.append(loop.create_task(attack.forever("long_line", partial(attack.long_line, n))))
    for n, user in enumerate(args.binary):
        binary = partial(attack.binary, user, n, rng)
        tasks.append(loop.create_task(attack.forever("binary", binary)))
    if args.burst:
        tasks.append(loop.create_task(attack.bursts()))
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        print(json.dumps({"stats": dict(stats.counts)}), flush=True)
    attack.stopping = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"stopped": dict(stats.counts)}), flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--net", type=int, default=10, help="attackers use 127.NET+k.*")
    parser.add_argument("--slow", type=int, default=0, help="one-byte-a-second connections")
    parser.add_argument("--long-lines", type=int, default=0, help="10 MB line senders")
    parser.add_argument("--stalled", nargs="*", default=[], help="users whose RETR stalls")
    parser.add_argument("--burst", type=int, default=0, help="connects per burst")
    parser.add_argument("--burst-pause", type=float, default=1.0)
    parser.add_argument("--binary", nargs="*", default=[], help="users that send binary")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def raise_nofile() -> None:
    """Thousands of sockets: the soft descriptor limit up to the hard one."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    raise_nofile()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(parse(sys.argv[1:])))
    else:
        uvloop.run(main(parse(sys.argv[1:])))
    os._exit(0)
