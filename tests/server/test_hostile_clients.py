"""Hostile clients all at once (issue 7, item 4), against the real `popbox serve`.

tests/hostile_load.py, in its own process, runs every attack at the same time: connections
that send one byte a second, lines of 10 MB without CRLF, logins that RETR a 20 MB message
and never read, bursts of connects that close, reset or send garbage, and random binary
after login. Meanwhile an honest client (in this process, blocking sockets, no event loop
of its own) logs in, LISTs, RETRs all of its mail and QUITs, again and again: its sessions
must all succeed byte for byte while the server's memory stays bounded and it keeps
accepting. Their times are compared with the same client's against the idle server, for
as long: at the median and the 90th and 99th percentiles, the attack's within 5x of the
idle server's, and at most Scale.over_bound of them (2 %, 1 % at the long scale) 5x the
idle median or more. (Those few are the moments 5,000 connects land at once: 1-3 of some
1,100 sessions in a long run, docs/performance.md.) The server's full garbage collections
(30-70 ms with a thousand sessions open) wait while a quiet client is served
(server/collector.py): none may run during the attack.

Clients run on other machines than the server they attack; here they share two cores
with it. So, with two CPUs or more, the server runs on a CPU of its own and the test and
the load generator on the others (server_cpu), for the idle sessions as for the rest:
what is measured is then the server's work for the attack, not the load generator's
work taking the server's CPU.

The suite runs a smaller attack (200 slow connections, bursts of 1,000); with
POPBOX_LONG_TESTS=1 the figures of the issue: 1,000 slow connections, bursts of 5,000.

The server keeps its default limits, as an admin would: max_connections = 10000 and
max_connections_per_ip = 100. The attackers come from many loopback addresses (at most
50 connections each), as a botnet would; a per-address limit is not what stops a
distributed attack, so the server must survive it with the limits an admin really sets.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Starter
from test_serve_metrics import scrape, value

from server_helpers import PopboxServer, RawClient, crlf, rss_kib

LONG = os.environ.get("POPBOX_LONG_TESTS") == "1"
LOAD = Path(__file__).parents[1] / "hostile_load.py"


@dataclass(frozen=True)
class Scale:
    slow: int  # connections sending one byte a second
    long_lines: int  # clients sending 10 MB lines, one after the other
    stalled: int  # logins whose RETR of a 20 MB message is never read
    burst: int  # connects per burst
    burst_pause: float  # seconds from the end of a burst to the next
    binary: int  # logins sending random binary
    idle_runs: int  # honest sessions against the idle server, at least (attack_seconds)
    attack_runs: int  # honest sessions under attack, at least
    attack_seconds: float  # and for at least this long (two bursts, slow bytes sent)
    over_bound: float  # of those, the share that may take longer than 5x the idle median


SCALE = (
    Scale(
        slow=1000,
        long_lines=5,
        stalled=10,
        burst=5000,
        burst_pause=10,
        binary=5,
        idle_runs=30,
        attack_runs=60,
        attack_seconds=15,
        over_bound=0.01,
    )
    if LONG
    else Scale(
        slow=200,
        long_lines=3,
        stalled=3,
        burst=1000,
        burst_pause=3,
        binary=3,
        idle_runs=15,
        attack_runs=20,
        attack_seconds=4,
        over_bound=0.02,
    )
)

HONEST = [
    b"Subject: honest %d\r\n\r\n" % i
    + b"".join(b"%04d %s\r\n" % (j, b"m" * 70) for j in range(267))
    for i in range(20)
]  # 20 messages of about 20 KB
BIG = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 20_000  # 20 MB
SMALL = [b"Subject: small\r\n\r\nsmall\r\n"]

# Peak RSS allowed. An idle popbox is about 40 MB (Python, uvloop, prometheus-client).
# Each open connection costs a few KiB (transport, protocol, session, task); a stalled
# RETR holds at most one 64 KiB storage block plus the transport's 64 KiB high-water
# mark; an endless line is dropped as it arrives (the core keeps 255 octets). So 1,000
# slow connections and 10 stalled 20 MB RETRs must fit well under 200 MB: whole messages
# or whole lines kept in memory (10 x 20 MB, 5 x 10 MB) would not.
MAX_RSS_KIB = 200 * 1024

# The honest client's time under attack is compared with the idle server's, measured the
# same way for as long, at these quantiles (nearest rank). The slowest session is reported,
# not compared: one sample, the idle one moved by whatever else the machine did then
# (20-30 ms in most runs here, 200 ms and more in a few).
QUANTILES = {"median": 0.5, "p90": 0.9, "p99": 0.99}


def honest_session(server: PopboxServer) -> float:
    """Log in, LIST, RETR every message, QUIT; check every byte; return the seconds."""
    started = time.monotonic()
    client = RawClient(server, timeout=30)
    assert client.greeting.startswith(b"+OK POP3 server ready <")
    assert client.login("alice", "secret").startswith(b"+OK maildrop has 20 messages")
    client.send(b"LIST\r\n")
    listing = client.read_multiline()
    sizes = [len(crlf(message)) for message in HONEST]
    expected = b"".join(b"%d %d\r\n" % (n, size) for n, size in enumerate(sizes, 1))
    assert listing == b"+OK 20 messages (%d octets)\r\n%s.\r\n" % (sum(sizes), expected)
    for n, message in enumerate(HONEST, 1):
        client.send(b"RETR %d\r\n" % n)
        wire = crlf(message)
        assert client.read_multiline() == b"+OK %d octets\r\n%s.\r\n" % (len(wire), wire)
    assert client.command(b"QUIT") == b"+OK POP3 server signing off (20 messages left)\r\n"
    assert client.read_until_closed() == b""
    client.close()
    return time.monotonic() - started


class RssSampler:
    """The server's resident set, sampled every 50 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.samples.append(rss_kib(self.pid))

    def finish(self) -> list[int]:
        self.stop.set()
        self.thread.join()
        return self.samples


@pytest.fixture
def load_generators() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def server_cpu() -> Iterator[set[int] | None]:
    """The first CPU, for pin_server(); this test's thread (and so the load generator it
    starts) moves to the others until the end of the test. None with fewer than two."""
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        yield None
        return
    first = min(allowed)
    os.sched_setaffinity(0, allowed - {first})
    try:
        yield {first}
    finally:
        os.sched_setaffinity(0, allowed)


def pin_server(pid: int, cpus: set[int] | None) -> None:
    """Every thread of the server on `cpus` (threads it starts later inherit them)."""
    if cpus is not None:
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), cpus)


def raise_nofile() -> None:
    """Thousands of sockets here and in `popbox serve`, which inherits the limit (systemd
    gives it LimitNOFILE=65536, contrib/systemd/popbox.service)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_attack(
    server: PopboxServer, generators: list[subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        str(LOAD),
        f"--port={server.port}",
        f"--slow={SCALE.slow}",
        f"--long-lines={SCALE.long_lines}",
        f"--burst={SCALE.burst}",
        f"--burst-pause={SCALE.burst_pause}",
        "--stalled",
        *(f"stall{n}" for n in range(SCALE.stalled)),
        "--binary",
        *(f"bin{n}" for n in range(SCALE.binary)),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    generators.append(process)
    assert process.stdout is not None
    first = json.loads(process.stdout.readline())
    assert "ready" in first, first
    return process


def stop_attack(process: subprocess.Popen[str]) -> dict[str, int]:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    last = json.loads(out.splitlines()[-1])
    counts: dict[str, int] = last["stopped"]
    return counts


def slowest(seconds: list[float], count: int = 5) -> str:
    return ", ".join(f"{value * 1000:.0f}" for value in sorted(seconds)[-count:])


def wait_for_no_connections(server: PopboxServer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (active := value(scrape(server), "popbox_connections_active")) != 0:
        assert time.monotonic() < deadline, f"{active} connections still active"
        time.sleep(0.2)


@dataclass
class AttackRun:
    """What the test saw while every attack ran."""

    sessions: list[float]  # the honest client's, in seconds
    counts: dict[str, int]  # the load generator's
    peak_rss: int  # KiB
    full_collections: float
    retrieved: float  # messages sent whole by RETR


def honest_sessions(server: PopboxServer, runs: int, seconds: float) -> list[float]:
    """Honest sessions one after the other, at least `runs` and for at least `seconds`."""
    took: list[float] = []
    until = time.monotonic() + seconds
    while len(took) < runs or time.monotonic() < until:
        took.append(honest_session(server))
    return took


def run_attack(server: PopboxServer, generators: list[subprocess.Popen[str]]) -> AttackRun:
    before = scrape(server)
    sampler = RssSampler(server.process.pid)
    attack = start_attack(server, generators)
    sessions = honest_sessions(server, SCALE.attack_runs, SCALE.attack_seconds)
    assert server.process.poll() is None
    during = scrape(server)
    counts = stop_attack(attack)
    full = "python_gc_collections_total"
    retrieved = "popbox_messages_retrieved_total"
    return AttackRun(
        sessions=sessions,
        counts=counts,
        peak_rss=max(sampler.finish()),
        full_collections=value(during, full, generation="2") - value(before, full, generation="2"),
        retrieved=value(during, retrieved) - value(before, retrieved),
    )


def quantile(seconds: list[float], q: float) -> float:
    """The nearest-rank quantile: the session q of them took at most (1.0: the slowest)."""
    ordered = sorted(seconds)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency_report(idle: list[float], attack: list[float]) -> tuple[str, dict[str, float]]:
    """The figures (idle and under attack, at each of QUANTILES) and their ratios."""
    ratios: dict[str, float] = {}
    parts = []
    for name, q in QUANTILES.items():
        calm, hit = quantile(idle, q), quantile(attack, q)
        ratios[name] = hit / calm
        parts.append(f"{name} {calm * 1000:.1f} / {hit * 1000:.1f} ms ({hit / calm:.1f}x)")
    strict = 5 * quantile(idle, 0.5)
    over = sum(1 for took in attack if took >= strict)
    text = (
        f"honest sessions idle ({len(idle)}) / under attack ({len(attack)}): "
        + ", ".join(parts)
        + f"; slowest idle {slowest(idle)} ms, under attack {slowest(attack)} ms;"
        f" {over} took 5x the idle median ({strict * 1000:.0f} ms) or more"
    )
    return text, ratios | {"over": over / len(attack)}


@pytest.mark.timeout(600 if LONG else 120)
def test_honest_client_is_served_during_every_attack_at_once(
    popbox: Starter, load_generators: list[subprocess.Popen[str]], server_cpu: set[int] | None
) -> None:
    raise_nofile()
    users = {"alice": "{PLAIN}secret"}
    users |= {f"stall{n}": "{PLAIN}pw" for n in range(SCALE.stalled)}
    users |= {f"bin{n}": "{PLAIN}pw" for n in range(SCALE.binary)}
    mail = {"alice": HONEST} | {f"bin{n}": SMALL for n in range(SCALE.binary)}
    mail |= {f"stall{n}": [BIG] for n in range(SCALE.stalled)}
    server = popbox(users, mail, extra='[metrics]\naddress = "127.0.0.1"\nport = 0\n')
    pin_server(server.process.pid, server_cpu)
    honest_session(server)  # the first one imports and caches what the others find ready
    idle = honest_sessions(server, SCALE.idle_runs, SCALE.attack_seconds)
    idle_rss = rss_kib(server.process.pid)
    run = run_attack(server, load_generators)

    latency, ratios = latency_report(idle, run.sessions)
    report = (  # the figures the issue asks to report
        f"{latency}; server RSS idle {idle_rss // 1024} MiB, peak {run.peak_rss // 1024} MiB;"
        f" full garbage collections during the attack: {run.full_collections:.0f};"
        f" attack: {run.counts}"
    )
    print(report)
    # Within 5x of the idle server: its median, 90th and 99th percentiles, each against
    # the same under attack; and only a few sessions (SCALE.over_bound) past 5x the idle
    # median.
    assert all(ratios[name] < 5 for name in QUANTILES), report
    assert ratios["over"] <= SCALE.over_bound, report
    assert run.peak_rss < MAX_RSS_KIB, report
    assert run.full_collections == 0, report
    # Every attack really ran (a generator that failed to connect proves nothing).
    counts = run.counts
    assert counts["slow_bytes"] >= SCALE.slow, report
    assert counts["long_lines_sent"] >= SCALE.long_lines, report
    assert counts["stalled_retr"] == SCALE.stalled, report
    # The stalled RETRs really stalled: none was sent whole (only the honest client's 20
    # were, each session), and the server kept their connections open.
    assert run.retrieved == len(HONEST) * len(run.sessions), report
    assert "stalled_closed_by_server" not in counts, report
    assert counts["burst_connects"] >= SCALE.burst, report
    assert counts["binary_chunks"] >= SCALE.binary, report

    # After the attack: every connection gone, the server serving as before.
    wait_for_no_connections(server)
    after = [honest_session(server) for _ in range(3)]
    assert statistics.median(after) < 5 * quantile(idle, 0.5), report
    assert server.process.poll() is None
