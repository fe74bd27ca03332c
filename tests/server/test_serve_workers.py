"""`workers = 2`: a master and two worker processes on the same listening sockets."""

from __future__ import annotations

import os
import signal

from conftest import Starter

from daemon_helpers import (
    children,
    served_by,
    stopped,
    wait_exit,
    wait_for_count,
    worker_pids,
)
from server_helpers import RawClient, log_mark

USERS = {"alice": "{PLAIN}secret", "bob": "{PLAIN}bobpw"}
MESSAGES = [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n"]


def test_both_workers_serve_and_the_lock_holds_across_them(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": MESSAGES}, workers=2)
    pids = worker_pids(server)
    first, second = pids[0], pids[1]
    assert first != second
    assert sorted(children(server.process.pid)) == sorted(pids.values())
    # While one worker is stopped the other accepts every new connection.
    with stopped(first):
        holder = RawClient(server)
        assert served_by(holder) == second
        assert holder.login("alice", "secret").startswith(b"+OK maildrop has 2 messages")
    with stopped(second):
        other = RawClient(server)
        assert served_by(other) == first
        # RFC 1939 section 8's exclusive lock, across processes.
        assert other.login("alice", "secret") == (
            b"-ERR [IN-USE] maildrop is locked by another session\r\n"
        )
        assert RawClient(server).login("bob", "bobpw").startswith(b"+OK maildrop has 0")
    assert holder.command(b"QUIT").startswith(b"+OK")
    holder.read_until_closed()
    assert other.login("alice", "secret").startswith(b"+OK maildrop has 2 messages")


def test_a_killed_worker_is_restarted_with_backoff(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": MESSAGES}, workers=2)
    pids = worker_pids(server)
    # Killed in the middle of a session: nothing is deleted and the lock goes with it.
    with stopped(pids[1]):
        victim = RawClient(server)
    assert served_by(victim) == pids[0]
    victim.login("alice", "secret")
    assert victim.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    mark = log_mark(server)
    os.kill(pids[0], signal.SIGKILL)
    assert victim.read_until_closed() == b""
    server.log.wait_for(
        rf"popbox\.workers: worker 0 exited unexpectedly pid={pids[0]} "
        r"killed by signal 9 \(SIGKILL\)",
        start=mark,
    )
    server.log.wait_for(r"worker 0 restarts in 0 s", start=mark)
    server.log.wait_for(r"worker 0 ready pid=", start=mark)
    restarted = worker_pids(server, mark)[0]
    assert restarted != pids[0]
    assert sorted(children(server.process.pid)) == sorted([restarted, pids[1]])
    with stopped(pids[1]):
        client = RawClient(server)
        assert served_by(client) == restarted
        assert client.login("alice", "secret").startswith(b"+OK maildrop has 2 messages")
        assert client.command(b"QUIT").startswith(b"+OK")
    # Dying again soon after a start: the restart waits, longer each time.
    for delay in ("0.5", "1"):
        mark = log_mark(server)
        os.kill(worker_pids(server)[0], signal.SIGKILL)
        server.log.wait_for(rf"worker 0 restarts in {delay} s", start=mark)
        server.log.wait_for(r"worker 0 ready pid=", start=mark)
    assert server.process.poll() is None
    assert server.stop() == 0
    server.log.wait_for(r"popbox\.server: stopped")


def test_workers_leave_when_the_master_is_killed(popbox: Starter) -> None:
    server = popbox(USERS, workers=2)
    pids = worker_pids(server)
    server.process.kill()
    server.process.wait()
    wait_for_count(server, r"worker pid=\d+: the master process is gone; shutting down", 2)
    for pid in pids.values():
        wait_exit(pid)
