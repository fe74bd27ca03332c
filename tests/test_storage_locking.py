"""The maildrop lock (RFC 1939 section 8): exclusive within a process and across processes,
released by close() and by the death of the holding process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import popbox
from popbox.storage.base import MaildropLocked, StoreError
from popbox.storage.locking import LOCK_FILE_NAME, MaildropLock
from popbox.storage.maildir import MaildirStore

# The child opens the maildrop, says so, and then follows orders from stdin:
# "close" -> close it and say "closed"; end of input -> exit without closing.
_HOLDER = """
import asyncio, sys
from popbox.storage.maildir import MaildirStore

async def main() -> None:
    drop = await MaildirStore(sys.argv[1]).open(sys.argv[2])
    print("locked", flush=True)
    for line in sys.stdin:
        if line.strip() == "close":
            await drop.close()
            print("closed", flush=True)

asyncio.run(main())
"""


def _template(tmp_path: Path) -> str:
    return str(tmp_path / "%u" / "Maildir")


def _can_open(tmp_path: Path, user: str = "alice") -> bool:
    async def attempt() -> bool:
        try:
            drop = await MaildirStore(_template(tmp_path)).open(user)
        except MaildropLocked:
            return False
        await drop.close()
        return True

    return asyncio.run(attempt())


@contextmanager
def _holder(tmp_path: Path, user: str = "alice") -> Iterator[subprocess.Popen[str]]:
    env = dict(os.environ, PYTHONPATH=str(Path(popbox.__file__).resolve().parents[1]))
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, _template(tmp_path), user],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "locked\n"
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()


def test_second_open_in_the_same_process_is_refused(tmp_path: Path) -> None:
    store = MaildirStore(_template(tmp_path))

    async def body() -> None:
        first = await store.open("alice")
        with pytest.raises(MaildropLocked):
            await store.open("alice")
        other = await store.open("bob")  # other maildrops are not affected
        await other.close()
        await first.close()
        again = await store.open("alice")
        await again.close()
        await again.close()

    asyncio.run(body())


def test_lock_conflicts_across_processes_until_close(tmp_path: Path) -> None:
    with _holder(tmp_path) as child:
        assert not _can_open(tmp_path)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("close\n")
        child.stdin.flush()
        assert child.stdout.readline() == "closed\n"
        assert child.poll() is None  # still running: the lock went with close()
        assert _can_open(tmp_path)


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    with _holder(tmp_path) as child:
        assert not _can_open(tmp_path)
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
        assert _can_open(tmp_path)
    # The lock file stays; only the lock goes.
    assert (tmp_path / "alice" / "Maildir" / LOCK_FILE_NAME).is_file()


def test_spawned_programs_do_not_inherit_the_lock(tmp_path: Path) -> None:
    (tmp_path / "box").mkdir()
    lock = MaildropLock.acquire(str(tmp_path / "box"))
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"  # started: its descriptors are settled
        fd_dir = Path(f"/proc/{child.pid}/fd")
        targets = {os.readlink(fd) for fd in fd_dir.iterdir()}
        assert lock.path not in targets  # O_CLOEXEC
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
        lock.release()


def test_symlinked_lock_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "box").mkdir()
    (tmp_path / "elsewhere").write_bytes(b"")
    (tmp_path / "box" / LOCK_FILE_NAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError) as caught:
        MaildropLock.acquire(str(tmp_path / "box"))
    assert not isinstance(caught.value, MaildropLocked)
    assert (tmp_path / "elsewhere").read_bytes() == b""
