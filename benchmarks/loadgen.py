"""A POP3 load generator: one asyncio event loop (uvloop when installed), light per reply.

    python benchmarks/loadgen.py churn --port 1110 --clients 50 --users bulk:500 ...

Commands go one at a time, as a client that waits for each reply (no pipelining); replies
are read in bulk (benchmarks/pop3client.py).

Workloads (the result is one JSON object on the last line of stdout):
- churn: each client connects, reads the greeting, USER, PASS, STAT, QUIT, closes, and
  starts again with its next user, from --start-at for --duration seconds;
- bulk: every user once: USER, PASS, LIST, UIDL, RETR of each message, QUIT;
- hold: log in --sessions sessions, print a "ready" line; after a first line on stdin
  each sends NOOP now and then, until a second line arrives; then QUIT all;
- bigdrop: one session: USER, PASS, STAT, UIDL, LIST, QUIT, each step timed.

Several generator processes may share a workload: --generator g of --generators G takes
every G-th client (or session), so their results add up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from pop3client import CRLF, Pop3Client, ServerError, Target
from seed import PASSWORD

FAILURES = (OSError, ServerError, ssl.SSLError)  # TimeoutError is an OSError
Outcome = dict[str, object]


@dataclass
class Tally:
    """What one generator process saw."""

    done: int = 0
    errors: int = 0
    received: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def failed(self, error: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{type(error).__name__}: {error}")


def users_of(spec: str) -> list[str]:
    """From "bulk:500": bulk00000 .. bulk00499 (the names benchmarks/seed.py gives)."""
    prefix, _, count = spec.partition(":")
    if not count:
        return [prefix]
    return [f"{prefix}{n:05d}" for n in range(int(count))]


def mine(total: int, args: argparse.Namespace) -> range:
    """The global indices (of clients or sessions) this generator process runs."""
    return range(args.generator, total, args.generators)


async def until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


# -- workloads -----------------------------------------------------------------------------


async def churn(target: Target, args: argparse.Namespace) -> Outcome:
    users = users_of(args.users)
    tally = Tally()
    end = args.start_at + args.duration
    password = b"PASS " + PASSWORD.encode() + CRLF
    scripts = {
        user: (b"USER " + user.encode() + CRLF, password, b"STAT\r\n", b"QUIT\r\n")
        for user in users
    }

    async def client(index: int) -> None:
        # Client i logs in as the users u with u % clients == i: no two clients ever hold
        # the same maildrop (popbox locks it; RFC 1939 section 8).
        own = users[index :: args.clients]
        await until(args.start_at)
        turn = 0
        while time.time() < end:
            user = own[turn % len(own)]
            turn += 1
            began = time.perf_counter()
            try:
                async with asyncio.timeout(args.timeout):
                    await target.session(index, scripts[user])
            except FAILURES as error:
                if time.time() < end:
                    tally.failed(error)
                await asyncio.sleep(0.01)  # a refusing server must not make us spin
                continue
            if time.time() <= end:
                tally.done += 1
                tally.latencies_ms.append((time.perf_counter() - began) * 1000)

    return await measured(args, [client(i) for i in mine(args.clients, args)], tally)


async def bulk(target: Target, args: argparse.Namespace) -> Outcome:
    users = users_of(args.users)
    tally = Tally()
    retr = [b"RETR %d\r\n" % n for n in range(1, args.messages + 1)]

    async def client(index: int) -> None:
        await until(args.start_at)
        for user in users[index :: args.clients]:
            try:
                session = await target.login(index, user)
            except FAILURES as error:
                tally.failed(error)
                continue
            try:
                async with asyncio.timeout(args.timeout * 4):
                    await session.command(b"LIST\r\n", multiline=True)
                    await session.command(b"UIDL\r\n", multiline=True)
                    for line in retr:
                        await session.command(line, multiline=True)
                    await session.command(b"QUIT\r\n")
                tally.done += 1
            except FAILURES as error:
                tally.failed(error)
            finally:
                session.close()
                tally.received += session.received

    return await measured(args, [client(i) for i in mine(args.clients, args)], tally)


async def measured(
    args: argparse.Namespace, clients: list[Coroutine[Any, Any, None]], tally: Tally
) -> Outcome:
    """Run the clients; CPU and wall time from --start-at until the last one is done."""
    await until(args.start_at)
    cpu = time.process_time()
    await asyncio.gather(*clients)
    finished = time.time()
    return {
        "done": tally.done,
        "errors": tally.errors,
        "error_samples": tally.error_samples,
        "received": tally.received,
        "latencies_ms": [round(value, 3) for value in tally.latencies_ms],
        "cpu_seconds": time.process_time() - cpu,
        "finished_at": finished,
    }


class Holder:
    """The hold workload: many logged-in sessions at once, each sending NOOP at random
    intervals of --noop-interval seconds on average, until told to stop."""

    def __init__(self, target: Target, args: argparse.Namespace) -> None:
        self.target, self.args = target, args
        self.gate = asyncio.Semaphore(args.ramp)  # logins (and QUITs) in flight
        self.sessions: dict[int, Pop3Client] = {}
        self.logins = Tally()
        self.noops = Tally()
        self.answered: set[int] = set()
        self.stop = asyncio.Event()
        self.pausing: dict[int, asyncio.Task[None]] = {}  # chat tasks between NOOPs

    async def open_one(self, index: int, user: str) -> None:
        async with self.gate:
            try:
                self.sessions[index] = await self.target.login(index, user)
            except FAILURES as error:
                self.logins.failed(error)

    async def chat(self, index: int, client: Pop3Client) -> None:
        """NOOP after random pauses until stopped. Only the pause is ever cancelled (see
        stop_chat), never a NOOP in flight, so QUIT later reads QUIT's own reply."""
        rng = random.Random(index)
        while not self.stop.is_set():
            task = asyncio.current_task()
            assert task is not None
            self.pausing[index] = task
            try:
                await asyncio.sleep(rng.uniform(0, 2 * self.args.noop_interval))
            except asyncio.CancelledError:
                return
            finally:
                del self.pausing[index]
            began = time.perf_counter()
            try:
                async with asyncio.timeout(self.args.timeout):
                    await client.command(b"NOOP\r\n")
            except FAILURES as error:
                self.noops.failed(error)
                return
            self.noops.latencies_ms.append((time.perf_counter() - began) * 1000)
            self.answered.add(index)

    def stop_chat(self) -> None:
        self.stop.set()
        for task in self.pausing.values():
            task.cancel()

    async def quit_one(self, client: Pop3Client) -> None:
        async with self.gate:
            try:
                async with asyncio.timeout(self.args.timeout):
                    await client.command(b"QUIT\r\n")
                self.noops.done += 1
            except FAILURES as error:
                self.noops.failed(error)
            client.close()

    async def run(self) -> Outcome:
        users = users_of(self.args.users)
        indices = mine(self.args.sessions, self.args)
        started = time.time()
        await asyncio.gather(*(self.open_one(i, users[i]) for i in indices))
        ramp = time.time() - started
        print(json.dumps({"event": "ready", "logged_in": len(self.sessions)}), flush=True)
        # Chat only once every generator is ready (a first line on stdin: "go"), so no
        # NOOP waits behind another generator's logins; a second line stops the chat.
        lines = await stdin_lines()
        await lines.readline()
        stopping = asyncio.ensure_future(lines.readline())
        stopping.add_done_callback(lambda _: self.stop_chat())
        cpu, window = time.process_time(), time.time()
        await asyncio.gather(*(self.chat(i, c) for i, c in self.sessions.items()))
        cpu, window = time.process_time() - cpu, time.time() - window
        await asyncio.gather(*(self.quit_one(c) for c in self.sessions.values()))
        return {
            "requested": len(indices),
            "logged_in": len(self.sessions),
            "login_errors": self.logins.errors,
            "error_samples": self.logins.error_samples + self.noops.error_samples,
            "ramp_seconds": ramp,
            "noops": len(self.noops.latencies_ms),
            "noop_errors": self.noops.errors,
            "answered_sessions": len(self.answered),
            "quit_ok": self.noops.done,
            "latencies_ms": [round(value, 3) for value in self.noops.latencies_ms],
            "cpu_seconds": cpu,
            "hold_seconds": window,
        }


async def stdin_lines() -> asyncio.StreamReader:
    """stdin as an asyncio stream (the runner's "go" and "stop" lines)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def hold(target: Target, args: argparse.Namespace) -> Outcome:
    return await Holder(target, args).run()


async def bigdrop(target: Target, args: argparse.Namespace) -> Outcome:
    """One session over a large maildrop, each step timed (seconds)."""
    steps: dict[str, float] = {}
    began = time.perf_counter()
    client = await target.login(0, users_of(args.users)[0])
    steps["login"] = time.perf_counter() - began
    for name in ("STAT", "UIDL", "LIST"):
        start = time.perf_counter()
        await client.command(name.encode() + CRLF, multiline=name != "STAT")
        steps[name] = time.perf_counter() - start
    steps["total"] = time.perf_counter() - began
    await client.command(b"QUIT\r\n")
    client.close()
    return {"steps": steps, "received": client.received}


WORKLOADS: dict[str, Callable[[Target, argparse.Namespace], Coroutine[Any, Any, Outcome]]] = {
    "churn": churn,
    "bulk": bulk,
    "hold": hold,
    "bigdrop": bigdrop,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-ca", help="implicit TLS, trusting this CA file")
    parser.add_argument("--users", default="bulk:500", help="PREFIX:COUNT or one name")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients, in all")
    parser.add_argument("--duration", type=float, default=10.0, help="churn: seconds")
    parser.add_argument("--messages", type=int, default=20, help="bulk: messages per user")
    parser.add_argument("--sessions", type=int, default=10_000, help="hold: sessions, in all")
    parser.add_argument("--ramp", type=int, default=100, help="hold: logins in flight")
    parser.add_argument("--noop-interval", type=float, default=10.0, help="hold: mean s")
    parser.add_argument("--sources", type=int, default=8, help="source addresses 127.0.0.x")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for a login")
    parser.add_argument("--generator", type=int, default=0)
    parser.add_argument("--generators", type=int, default=1)
    parser.add_argument("--start-at", type=float, default=0.0, help="epoch seconds")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.start_at:
        args.start_at = time.time()
    tls = None
    if args.tls_ca:
        tls = ssl.create_default_context(cafile=args.tls_ca)
    target = Target(args.host, args.port, tls, args.sources, args.timeout)
    try:
        import uvloop  # noqa: PLC0415

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result: Outcome = runner.run(WORKLOADS[args.workload](target, args))
    # The event loop may have left our pipes non-blocking: a result longer than the pipe
    # buffer (64 KiB) would then be cut short. Written whole, blocking, past any buffer.
    sys.stdout.flush()
    fd = sys.stdout.fileno()
    os.set_blocking(fd, True)
    view = memoryview((json.dumps(result) + "\n").encode())
    while view:
        view = view[os.write(fd, view) :]
    return 0


if __name__ == "__main__":
    sys.exit(main())
