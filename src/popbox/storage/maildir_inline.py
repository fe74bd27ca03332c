"""Small file-system work of the Maildir store done on the event loop, while it stays
quick: opening a maildrop whose cache is current, reading a small message the page cache
holds, and the page-cache reads of blocks that storage/maildir_count.py counts with.
Everything else runs in worker threads (storage/maildir.py).

In a worker thread this same work waits for the GIL after each of its system calls: with
the loop busy (the hostile test of issue 7), a login's open took 4 ms at the median and
18 ms at the 95th percentile in the thread, of which 0.8 ms was work. On the loop it
takes its 0.2 ms, and no thread contends for the GIL.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable
from typing import ClassVar, TypeVar

from popbox.storage.base import READ_BLOCK_SIZE, MaildropLocked, StoreError
from popbox.storage.locking import MaildropLock
from popbox.storage.maildir_listing import MESSAGE_OPEN_FLAGS
from popbox.storage.maildir_snapshot import Snapshot, cached_snapshot
from popbox.storage.maildir_uidl import UidlSettings

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


# The biggest maildrop cache opened on the loop: parsing costs about 1.4 us a message, so
# this (600-1,000 messages, as long as their names are) stays near a millisecond; a
# bigger maildrop (100,000 messages: 140 ms) is opened in the worker thread.
CACHE_ON_THE_LOOP = 64 * 1024

# Linux 4.14+: a read that fails with EAGAIN rather than wait for the disk.
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


class _OnTheLoop:
    """Whether the loop still does this work. Its open(2)s and stat(2)s can still wait (a
    network filesystem whose server is slow, metadata not in memory): after STRIKES
    pieces that each took longer than SLOW within WINDOW seconds, all of it goes to
    worker threads, for the life of the process. One slow piece is not enough: under
    load a piece of 0.3 ms now and then takes 10-20 ms of wall time for reasons that are
    not the file system (a young-generation garbage collection, the GIL held by a worker
    thread after each system call, the process descheduled), and a single one of those
    used to send every open and read of the process to threads for good, where they
    wait for the GIL; a file system that has become slow is slow every time."""

    SLOW = 0.020  # seconds: far above the work when cached (~20-300 us), below a stall
    STRIKES = 3
    WINDOW = 60.0  # seconds
    enabled = True
    _slow_at: ClassVar[collections.deque[float]] = collections.deque(maxlen=STRIKES)

    @classmethod
    def run(cls, func: Callable[[], _T], path: str) -> _T | None:
        """func(), or None without calling it once disabled (see on_the_loop)."""
        if not cls.enabled:
            return None
        started = time.monotonic()
        try:
            return func()
        finally:  # a slow MaildropLocked counts too
            if (took := (now := time.monotonic()) - started) > cls.SLOW:
                cls._strike(now, took, path)

    @classmethod
    def _strike(cls, now: float, took: float, path: str) -> None:
        cls._slow_at.append(now)
        if len(cls._slow_at) < cls.STRIKES or now - cls._slow_at[0] > cls.WINDOW:
            logger.info("file-system work on %s took %.0f ms on the event loop", path, took * 1000)
            return
        cls.enabled = False
        logger.warning(
            "file-system work on %s took %.0f ms on the event loop (%d times over %.0f ms "
            "in %.0f s): maildrops are opened and messages are read in worker threads from "
            "now on",
            path,
            took * 1000,
            cls.STRIKES,
            cls.SLOW * 1000,
            now - cls._slow_at[0],
        )


def open_if_cached(maildir: str, settings: UidlSettings) -> tuple[MaildropLock, Snapshot] | None:
    """The lock and the snapshot of an existing maildrop whose cache may stand in for the
    listing and is at most CACHE_ON_THE_LOOP octets (maildir_snapshot.cached_snapshot);
    None for any other, and for any error but MaildropLocked: the worker thread then
    creates, lists, and reports."""
    try:
        lock = MaildropLock.acquire(maildir)
    except MaildropLocked:
        raise
    except StoreError:
        return None
    try:
        snapshot = cached_snapshot(maildir, settings, CACHE_ON_THE_LOOP)
    except BaseException:
        lock.release()
        raise
    if snapshot is None:
        lock.release()
        return None
    return lock, snapshot


def read_if_cached(path: str) -> bytes | None:
    """The whole message, read on the event loop thread, if it fits in one block and is
    all in the page cache (read_block_if_cached); None otherwise, and the worker thread
    reads it (and reports any error)."""
    if _RWF_NOWAIT is None:
        return None
    try:
        fd = os.open(path, MESSAGE_OPEN_FLAGS)
    except OSError:
        return None
    try:
        block = read_block_if_cached(fd, 0)
        if block is None or len(block) >= READ_BLOCK_SIZE or len(block) != os.fstat(fd).st_size:
            return None  # bigger than a block, or only partly cached
    except OSError:
        return None
    finally:
        os.close(fd)
    return block


def read_block_if_cached(fd: int, offset: int) -> bytes | None:
    """The block of `fd` at `offset` if the page cache has it (preadv2 RWF_NOWAIT: the
    read never waits for the disk; b"" at the end of file), else None."""
    if _RWF_NOWAIT is None:
        return None
    buffer = bytearray(READ_BLOCK_SIZE)
    try:
        got = os.preadv(fd, [buffer], offset, _RWF_NOWAIT)
    except OSError:  # EAGAIN: on disk; EOPNOTSUPP: a filesystem without it
        return None
    return bytes(memoryview(buffer)[:got])


def on_the_loop(func: Callable[[], _T], path: str) -> _T | None:
    """func() (open_if_cached or read_if_cached, on `path`), or None without calling it
    since one such call took too long: the caller then uses its worker thread."""
    return _OnTheLoop.run(func, path)
