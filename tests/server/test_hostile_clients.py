"""Hostile clients all at once (issue 7, item 4), against the real `popbox serve`.

tests/hostile_load.py, in its own process, runs every attack at the same time: connections
that send one byte a second, lines of 10 MB without CRLF, logins that RETR a 20 MB message
and never read, bursts of connects that close, reset or send garbage, and random binary
after login. Meanwhile an honest client (in this process, blocking sockets, no event loop
of its own) logs in, LISTs, RETRs all of its mail and QUITs, again and again: its sessions
must all succeed byte for byte, each within 5x of the idle server's median time, while
the server's memory stays bounded and it keeps accepting. A few may take longer
(Scale.over_bound: 2 %, 1 % at the long scale), and the bound is at least 5x IDLE_FLOOR:
on a 2-core CI machine, scheduling alone moves such times by tens of milliseconds. The
server's full garbage collections (30-70 ms with a thousand sessions open) wait while a
quiet client is served (server/collector.py): none may run during the attack.

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
    idle_runs: int  # honest sessions against the idle server
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

# The idle median is 8-13 ms here from one run to the next, which moves 5x of it by 25 ms:
# the bound is 5x max(idle median, this floor). The count over 5x the idle median itself
# is reported too: at the long scale, 0-5 sessions of 700-1,060 (docs/performance.md).
IDLE_FLOOR = 0.020


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
    idle = [honest_session(server) for _ in range(SCALE.idle_runs)]
    idle_rss = rss_kib(server.process.pid)

    before = scrape(server)
    full_before = value(before, "python_gc_collections_total", generation="2")
    retrieved_before = value(before, "popbox_messages_retrieved_total")
    sampler = RssSampler(server.process.pid)
    attack = start_attack(server, load_generators)
    under_attack: list[float] = []
    until = time.monotonic() + SCALE.attack_seconds
    while len(under_attack) < SCALE.attack_runs or time.monotonic() < until:
        under_attack.append(honest_session(server))
    assert server.process.poll() is None
    during = scrape(server)
    full_collections = value(during, "python_gc_collections_total", generation="2")
    full_collections -= full_before
    retrieved = value(during, "popbox_messages_retrieved_total") - retrieved_before
    counts = stop_attack(attack)
    samples = sampler.finish()
    peak = max(samples)

    idle_median = statistics.median(idle)
    attack_median = statistics.median(under_attack)
    report = (  # the figures the issue asks to report
        f"honest session idle: median {idle_median * 1000:.1f} ms; under attack "
        f"({len(under_attack)} sessions): median {attack_median * 1000:.1f} ms, slowest "
        f"{slowest(under_attack)} ms; server RSS "
        f"idle {idle_rss // 1024} MiB, peak {peak // 1024} MiB; attack: {counts}"
    )
    bound = 5 * max(idle_median, IDLE_FLOOR)
    over = sum(1 for took in under_attack if took >= bound)
    report += f"; {over} sessions took {bound * 1000:.0f} ms or more"
    strict = 5 * idle_median  # without IDLE_FLOOR: reported, not asserted
    over_strict = sum(1 for took in under_attack if took >= strict)
    report += f", {over_strict} took 5x the idle median ({strict * 1000:.0f} ms) or more"
    report += f"; full garbage collections during the attack: {full_collections:.0f}"
    print(report)
    assert attack_median < bound, report
    assert over <= SCALE.over_bound * len(under_attack), report
    assert peak < MAX_RSS_KIB, report
    assert full_collections == 0, report
    # Every attack really ran (a generator that failed to connect proves nothing).
    assert counts["slow_bytes"] >= SCALE.slow, report
    assert counts["long_lines_sent"] >= SCALE.long_lines, report
    assert counts["stalled_retr"] == SCALE.stalled, report
    # The stalled RETRs really stalled: none was sent whole (only the honest client's 20
    # were, each session), and the server kept their connections open.
    assert retrieved == len(HONEST) * len(under_attack), report
    assert "stalled_closed_by_server" not in counts, report
    assert counts["burst_connects"] >= SCALE.burst, report
    assert counts["binary_chunks"] >= SCALE.binary, report

    # After the attack: every connection gone, the server serving as before.
    wait_for_no_connections(server)
    after = [honest_session(server) for _ in range(3)]
    assert statistics.median(after) < bound, report
    assert server.process.poll() is None
