"""Watching `popbox serve` as a process tree: its workers, their pids and users, exits.

Waits are on events: log lines, and a pidfd that becomes readable when a process exits
(pidfd_open(2)), never on sleeps.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from server_helpers import PopboxServer, RawClient

WORKER_READY = re.compile(r"popbox\.workers: worker (\d+) ready pid=(\d+)")
GREETING_PID = re.compile(rb"^\+OK POP3 server ready <(\d+)\.")


def worker_pids(server: PopboxServer, start: int = 0) -> dict[int, int]:
    """The latest pid of each worker slot that logged "ready" after line `start`."""
    with server.log.cond:
        lines = server.log.lines[start:]
    pids: dict[int, int] = {}
    for line in lines:
        if found := WORKER_READY.search(line):
            pids[int(found.group(1))] = int(found.group(2))
    return pids


def served_by(client: RawClient) -> int:
    """The pid of the process serving `client`: the greeting's APOP timestamp starts with
    it (RFC 1939 section 7, <process-ID.clock@hostname>)."""
    found = GREETING_PID.match(client.greeting)
    assert found, client.greeting
    return int(found.group(1))


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP `pid` for the block: it accepts nothing, so another worker must."""
    os.kill(pid, signal.SIGSTOP)
    try:
        # kill() returns before the stop takes effect: wait for the state to show "T".
        deadline = time.monotonic() + 10.0
        while process_state(pid) != "T":
            assert time.monotonic() < deadline, f"process {pid} did not stop"
            time.sleep(0.001)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (proc(5)): "S" sleeping, "T" stopped, ..."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def wait_exit(pid: int, timeout: float = 15.0) -> None:
    """Wait until process `pid` (not necessarily our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        assert readable, f"process {pid} still running after {timeout} s"
    finally:
        os.close(fd)


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def ids(pid: int) -> tuple[list[int], list[int], list[int]]:
    """Real/effective/saved/filesystem uids, the same gids, and supplementary groups."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = [int(v) for v in value.split()] if key in ("Uid", "Gid", "Groups") else []
    return fields["Uid"], fields["Gid"], fields["Groups"]


def connection_refused(server: PopboxServer) -> bool:
    try:
        socket.create_connection((server.host, server.port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def wait_for_count(server: PopboxServer, pattern: str, count: int, start: int = 0) -> None:
    """Wait until `count` log lines after line `start` match `pattern` (one per worker)."""
    deadline = time.monotonic() + 15.0
    regex = re.compile(pattern)
    with server.log.cond:
        while sum(1 for line in server.log.lines[start:] if regex.search(line)) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and not server.log.closed, "\n".join(server.log.lines)
            server.log.cond.wait(remaining)
