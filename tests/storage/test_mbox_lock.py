"""mbox locking: a dotlock plus an fcntl lock for the whole session, compatible with the
programs that write mboxes; stale dotlocks taken over; delivery waiting for a session."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_mbox_support import holder, mbox_path, record, run, store_at

from popbox.storage import mbox_lock
from popbox.storage.base import MaildropLocked, StoreError
from popbox.storage.mbox import MboxStore

MESSAGE = b"Subject: hi\n\nhello\n"


def lock_path(tmp_path: Path, user: str = "alice") -> Path:
    return tmp_path / f"{user}.lock"


def can_open(store: MboxStore, user: str = "alice") -> bool:
    async def attempt() -> bool:
        try:
            drop = await store.open(user)
        except MaildropLocked:
            return False
        await drop.close()
        return True

    return run(attempt())


def test_second_session_in_the_same_process_is_refused_at_once(tmp_path: Path) -> None:
    mbox_path(tmp_path).write_bytes(record(MESSAGE))
    store = store_at(tmp_path)

    async def main() -> None:
        first = await store.open("alice")
        content = lock_path(tmp_path).read_bytes()
        assert content == f"{os.getpid()} {socket.gethostname()}\n".encode()
        with pytest.raises(MaildropLocked):
            await store.open("alice")
        other = await store.open("bob")  # other users are not affected
        await other.close()
        await first.close()
        assert not lock_path(tmp_path).exists()
        again = await store.open("alice")
        await again.close()

    run(main())


def test_session_in_another_process_then_killed(tmp_path: Path) -> None:
    mbox_path(tmp_path).write_bytes(record(MESSAGE))
    store = store_at(tmp_path)
    with holder(tmp_path) as child:
        assert not can_open(store)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        # Its fcntl lock died with it; its dotlock names a dead process of this host.
        assert lock_path(tmp_path).exists()
        assert can_open(store)
    assert not lock_path(tmp_path).exists()


def test_deliver_waits_for_a_session_in_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = mbox_path(tmp_path)
    path.write_bytes(record(MESSAGE))
    waiting = threading.Event()
    real_sleep = mbox_lock._sleep

    def observed_sleep(seconds: float) -> None:
        waiting.set()
        real_sleep(seconds)

    monkeypatch.setattr(mbox_lock, "_sleep", observed_sleep)
    with holder(tmp_path) as child:
        delivery = threading.Thread(
            target=run, args=(store_at(tmp_path).deliver("alice", b"A: b\n\nlate\n"),)
        )
        delivery.start()
        assert waiting.wait(10)
        assert path.read_bytes() == record(MESSAGE)
        assert child.stdin is not None
        child.stdin.close()  # the session ends normally (QUIT)
        delivery.join(10)
        assert not delivery.is_alive()
    assert path.read_bytes().endswith(b"\nA: b\n\nlate\n\n")
    assert not lock_path(tmp_path).exists()


_FCNTL_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)  # classic F_SETLK, as Postfix and mutt take it
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_program_holding_only_the_fcntl_lock_keeps_us_out(tmp_path: Path) -> None:
    path = mbox_path(tmp_path)
    path.write_bytes(record(MESSAGE))
    child = subprocess.Popen(
        [sys.executable, "-c", _FCNTL_HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "locked\n"
        store = store_at(tmp_path)
        assert not can_open(store)
        assert not lock_path(tmp_path).exists()  # our dotlock was given back
    finally:
        child.kill()
        child.wait(10)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
    assert can_open(store)


def test_fresh_foreign_dotlock_keeps_us_out(tmp_path: Path) -> None:
    mbox_path(tmp_path).write_bytes(record(MESSAGE))
    lock_path(tmp_path).write_bytes(b"")  # Postfix's: empty
    assert not can_open(store_at(tmp_path))
    assert lock_path(tmp_path).exists()


def test_stale_dotlock_is_taken_over(tmp_path: Path) -> None:
    mbox_path(tmp_path).write_bytes(record(MESSAGE))
    lock = lock_path(tmp_path)
    lock.write_bytes(b"0")  # procmail's
    old = time.time() - 301
    os.utime(lock, (old, old))
    assert can_open(store_at(tmp_path))
    assert not lock.exists()


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait(10)
    return child.pid


def test_dotlock_of_a_dead_process_on_this_host_is_stale(tmp_path: Path) -> None:
    mbox_path(tmp_path).write_bytes(record(MESSAGE))
    lock = lock_path(tmp_path)
    host = socket.gethostname()
    lock.write_bytes(f"{_dead_pid()} {host}\n".encode())
    assert can_open(store_at(tmp_path))
    # Alive, or on another host (whose processes we cannot see): only age counts.
    for content in (f"{os.getpid()} {host}\n", f"{_dead_pid()} other-{host}\n"):
        lock.write_bytes(content.encode())
        assert not can_open(store_at(tmp_path))
    lock.unlink()


def test_session_keeps_its_dotlock_fresh(tmp_path: Path) -> None:
    mbox_path(tmp_path).write_bytes(record(MESSAGE))
    store = store_at(tmp_path, dotlock_stale=0.3)

    async def main() -> None:
        drop = await store.open("alice")
        try:
            lock = lock_path(tmp_path)
            os.utime(lock, (1000, 1000))
            deadline = time.monotonic() + 10
            while lock.stat().st_mtime == 1000 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert lock.stat().st_mtime > 1000
        finally:
            await drop.close()

    run(main())


def test_deliver_waits_for_the_session_then_proceeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = mbox_path(tmp_path)
    path.write_bytes(record(MESSAGE))
    store = store_at(tmp_path)
    waiting = threading.Event()
    real_sleep = mbox_lock._sleep

    def observed_sleep(seconds: float) -> None:
        waiting.set()
        real_sleep(seconds)

    monkeypatch.setattr(mbox_lock, "_sleep", observed_sleep)

    async def main() -> None:
        drop = await store.open("alice")
        delivery = asyncio.create_task(store.deliver("alice", b"Subject: new\n\nnew\n"))
        await asyncio.to_thread(waiting.wait, 10)
        assert not delivery.done()
        assert path.read_bytes() == record(MESSAGE)  # the snapshot is undisturbed
        await drop.close()
        await delivery

    run(main())
    assert path.read_bytes().startswith(record(MESSAGE) + b"From MAILER-DAEMON ")
    assert path.read_bytes().endswith(b"\nSubject: new\n\nnew\n\n")


def test_deliver_gives_up_after_lock_timeout(tmp_path: Path) -> None:
    path = mbox_path(tmp_path)
    path.write_bytes(record(MESSAGE))
    store = store_at(tmp_path, lock_timeout=0.2)

    async def main() -> None:
        drop = await store.open("alice")
        try:
            with pytest.raises(StoreError, match="stayed locked"):
                await store.deliver("alice", MESSAGE)
        finally:
            await drop.close()

    run(main())
    assert path.read_bytes() == record(MESSAGE)


def test_symlinked_mbox_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(record(MESSAGE))
    mbox_path(tmp_path).symlink_to(target)
    store = store_at(tmp_path)
    with pytest.raises(StoreError, match="symbolic link"):
        run(store.open("alice"))
    with pytest.raises(StoreError, match="symbolic link"):
        run(store.deliver("alice", MESSAGE))
    assert target.read_bytes() == record(MESSAGE)
    assert not lock_path(tmp_path).exists()


def test_hard_linked_mbox_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(record(MESSAGE))
    os.link(target, mbox_path(tmp_path))
    with pytest.raises(StoreError, match="hard link"):
        run(store_at(tmp_path).open("alice"))
    assert not lock_path(tmp_path).exists()
