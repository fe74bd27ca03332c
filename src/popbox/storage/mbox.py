"""The mbox mail store (RFC 4155), one file per user as Postfix local(8), procmail and mutt
write it: `[mail] location = "mbox:/var/mail/%u"`.

MboxStore.open(user) takes the mbox's dotlock and fcntl lock (storage/mbox_lock.py) for the
whole session (RFC 1939 section 8), parses the file once (storage/mbox_scan.py) and returns
an MboxMaildrop that streams messages from their byte ranges and, at UPDATE, rewrites the
file without the deleted ones (storage/mbox_rewrite.py). A missing mbox is an empty
maildrop; it is created by the first delivery (storage/mbox_deliver.py), not by open.
File work runs in worker threads, so a big mbox or a slow disk never stalls the event loop.

Where messages begin and end, and the quoting, are in storage/mbox_format.py; the UIDL
scheme in storage/mbox_uidl.py; first-retrieval times in storage/mbox_cache.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, Callable, Sequence
from functools import partial
from typing import Any, Final, TypeVar

from popbox.storage.base import (
    DeleteResult,
    MaildropLocked,
    MessageInfo,
    StoreError,
)
from popbox.storage.location import check_template, refuse_beside_names, user_location
from popbox.storage.mbox_cache import CACHE_SUFFIX, load_retrievals, save_retrievals
from popbox.storage.mbox_deliver import DEFAULT_SENDER, append_message
from popbox.storage.mbox_format import MBOX_FORMATS, MboxFormat, MessageStream, is_separator_at
from popbox.storage.mbox_index import (
    INDEX_SUFFIX,
    FileStamp,
    after_rewrite,
    drop_index,
    load_parsed,
)
from popbox.storage.mbox_journal import JOURNAL_SUFFIX, recover_append
from popbox.storage.mbox_lock import DOTLOCK_SUFFIX, MboxLock
from popbox.storage.mbox_records import MboxEntry, MboxSnapshot, Parsed
from popbox.storage.mbox_rewrite import rewrite_without
from popbox.storage.threads import in_thread_owned

__all__ = ["MboxMaildrop", "MboxStore"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Blocks read per worker-thread hop when streaming (as for Maildir): fewer hops for big
# messages while at most this many READ_BLOCK_SIZE blocks sit in memory per reader.
_BLOCKS_PER_HOP: Final = 4

# The dotlock is renewed this many times per stale period, so that no program (using our
# dotlock_stale or a longer one) ever takes the lock of a live session for stale.
_REFRESHES_PER_STALE_PERIOD: Final = 3

# The mbox as the snapshot saw it: (size, mtime, ctime) in ns; None: there was no file.
_Stamp = tuple[int, int, int] | None

# The files kept beside an mbox, named after it (its dotlock, as every mail program
# names it, and ours). An mbox whose name ends so would be taken for another's: removed
# as a stale dotlock, overwritten as an index, emptied as a spent journal.
_BESIDE_SUFFIXES: Final = (DOTLOCK_SUFFIX, CACHE_SUFFIX, INDEX_SUFFIX, JOURNAL_SUFFIX)
_TEMP_MARK: Final = ".popbox-tmp."  # in our temporary files' names (mbox_cache.temp_prefix)


def _check_template(template: str) -> None:
    check_template(template, "mbox")
    if template.endswith("/"):
        raise ValueError(f"mbox location template {template!r} names a directory")


class MboxStore:
    """mbox files at `location_template` (e.g. "/var/mail/%u"), one per user.

    mbox_format:   "mboxo" (Postfix, procmail: "From " lines quoted, ">From " read as is)
                   or "mboxrd" (">From " lines unquoted on reading, quoted on delivery).
    dotlock_stale: age in seconds after which a dotlock is another program's leftover.
    lock_timeout:  how long deliver() waits for a session to release the mbox.
    """

    def __init__(
        self,
        location_template: str,
        *,
        mbox_format: MboxFormat = "mboxo",
        dotlock_stale: float = 300.0,
        lock_timeout: float = 30.0,
    ) -> None:
        _check_template(location_template)
        if mbox_format not in MBOX_FORMATS:
            raise ValueError(f"mbox_format must be one of {MBOX_FORMATS}, got {mbox_format!r}")
        if not dotlock_stale > 0:
            raise ValueError(f"dotlock_stale must be positive, got {dotlock_stale!r}")
        if not lock_timeout >= 0:
            raise ValueError(f"lock_timeout must not be negative, got {lock_timeout!r}")
        self.location_template = location_template
        self.mbox_format: MboxFormat = mbox_format
        self.dotlock_stale = float(dotlock_stale)
        self.lock_timeout = float(lock_timeout)

    def __repr__(self) -> str:
        return f"MboxStore({self.location_template!r}, mbox_format={self.mbox_format!r})"

    def location(self, user: str) -> str:
        """The user's mbox path. Raises InvalidMaildropUser, also for a path that names
        another mbox's dotlock or one of our files beside it; touches no file."""
        path = user_location(self.location_template, user)
        return refuse_beside_names(path, user, _BESIDE_SUFFIXES, _TEMP_MARK)

    async def open(self, user: str) -> MboxMaildrop:
        """Lock and snapshot the user's mbox (RFC 1939 section 8).

        Raises InvalidMaildropUser, MaildropLocked or StoreError.
        """
        path = self.location(user)
        opener = partial(_open_session, path, self.mbox_format, self.dotlock_stale)
        lock, snapshot, parsed, stamp = await in_thread_owned(
            opener, lambda opened: opened[0].release()
        )
        refresh = self.dotlock_stale / _REFRESHES_PER_STALE_PERIOD
        return MboxMaildrop(
            path, lock, snapshot, self.mbox_format, refresh, parsed=parsed, stamp=stamp
        )

    async def deliver(
        self, user: str, message: bytes, *, envelope_sender: str = DEFAULT_SENDER
    ) -> None:
        """Append `message` to the user's mbox, creating it (mode 0600) if missing.

        The separator line names `envelope_sender` (the SMTP MAIL FROM; the interface does
        not carry it, so it defaults to MAILER-DAEMON, as Postfix writes for the null
        sender). Waits up to lock_timeout for a POP3 session holding the mbox, then raises
        StoreError (the MTA retries later). Raises InvalidMaildropUser for a bad name.
        """
        path = self.location(user)
        await asyncio.to_thread(
            partial(
                append_message,
                path,
                message,
                mbox_format=self.mbox_format,
                sender=envelope_sender,
                stale_after=self.dotlock_stale,
                timeout=self.lock_timeout,
            )
        )


def _open_session(
    path: str, mbox_format: MboxFormat, stale: float
) -> tuple[MboxLock, MboxSnapshot, Parsed, _Stamp]:
    lock = MboxLock.try_acquire(path, stale_after=stale, create=False)
    if lock is None:
        raise MaildropLocked(f"mbox {path!r} is locked by another session or program")
    try:
        if lock.fd < 0:
            empty = Parsed(size=0, records=())
            return lock, empty.snapshot(), empty, None
        recover_append(path, lock.fd)  # a delivery cut short by a crash
        try:
            stamp = FileStamp.of(lock.fd)
        except OSError as exc:
            raise StoreError(f"cannot stat mbox {path!r}: {exc.strerror}") from exc
        parsed = load_parsed(lock.fd, path, stamp, mbox_format)
        snapshot = parsed.snapshot(load_retrievals(path))
        return lock, snapshot, parsed, (stamp.size, stamp.mtime_ns, stamp.ctime_ns)
    except BaseException:
        lock.release()
        raise


class MboxMaildrop:
    """An open, locked mbox; the listing is fixed until close()."""

    def __init__(
        self,
        path: str,
        lock: MboxLock,
        snapshot: MboxSnapshot,
        mbox_format: MboxFormat,
        refresh_interval: float,
        *,
        parsed: Parsed,
        stamp: _Stamp = None,
    ) -> None:
        self.path = path
        self._lock = lock
        self._stamp = stamp
        self._format: MboxFormat = mbox_format
        self._parsed = parsed  # for the index after UPDATE (storage/mbox_index.py)
        self._snapshot = snapshot
        listing = snapshot.listing
        self._numbers = dict(zip(listing.keys, range(len(listing)), strict=True))
        # Only messages still present: entries of deleted ones go at the next write.
        self._retrievals: dict[str, float] = {
            unique_id: when
            for unique_id, when in zip(listing.unique_ids, listing.first_retrieved, strict=True)
            if when is not None
        }
        self._closed = False
        self._updated = False
        # Worker-thread jobs that use the lock's descriptors: close() waits for them.
        self._inflight: set[asyncio.Future[Any]] = set()
        self._refresh_interval = refresh_interval
        self._refresher: asyncio.TimerHandle | None = None
        if lock.has_dotlock:
            self._schedule_refresh()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "locked"
        return f"<MboxMaildrop {self.path!r} {len(self._snapshot.listing)} messages {state}>"

    @property
    def listing(self) -> Sequence[MessageInfo]:
        return self._snapshot.listing

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreError(f"mbox {self.path!r} is closed")
        if self._updated:
            raise StoreError(f"mbox {self.path!r} was already updated")

    def _entry(self, key: str) -> MboxEntry:
        self._check_usable()
        # An unknown key is the caller's bug, not a vanished message.
        return self._snapshot.entry(self._numbers[key])

    async def read(self, key: str) -> AsyncGenerator[bytes, None]:
        """Yield the message (unquoted for mboxrd) in blocks of at most READ_BLOCK_SIZE.

        Raises StoreError if the file is no longer the one the snapshot describes (a
        program that ignores the locks wrote to it: the listed offsets may now hold other
        bytes, so nothing is served from them), or on I/O errors; KeyError for a key not
        in the listing.
        """
        entry = self._entry(key)
        stream = MessageStream(self._lock.fd, entry.start, entry.end, self._format)
        hop = partial(_first_blocks, self._lock.fd, entry, stream, self.path, self._stamp)
        while not stream.finished:
            for block in await self._in_worker(hop):
                yield block
            # Closed meanwhile: the descriptor number may already name another file.
            self._check_usable()
            hop = partial(_next_blocks, self._lock.fd, stream, self.path, self._stamp)

    async def record_retrievals(self, keys: Sequence[str], when: float) -> None:
        """Remember first retrieval times in `<mbox>.popbox` (an existing time is kept)."""
        added = False
        for key in keys:
            unique_id = self._entry(key).info.unique_id
            if unique_id not in self._retrievals:
                self._retrievals[unique_id] = when
                added = True
        if added:
            await self._save_retrievals()

    async def delete(self, keys: Sequence[str]) -> DeleteResult:
        """Rewrite the mbox without these messages (RFC 1939 section 6, UPDATE); once per
        session. On any failure nothing is removed and every key is in `failed`."""
        unique = list(dict.fromkeys(keys))
        entries = [self._entry(key) for key in unique]
        if not entries:
            return DeleteResult(removed=(), failed=())
        self._updated = True
        ranges = [(entry.separator, entry.record_end) for entry in entries]
        rewrite = partial(
            _rewrite_and_index, self._lock, self._format, self._parsed, self._snapshot.size, ranges
        )
        try:
            await self._in_worker(rewrite)
        except StoreError as exc:
            logger.error("mbox %r: nothing deleted: %s", self.path, exc)
            return DeleteResult(removed=(), failed=tuple(unique))
        gone = {entry.info.unique_id for entry in entries}
        if gone & self._retrievals.keys():
            for unique_id in gone:
                self._retrievals.pop(unique_id, None)
            try:
                await self._save_retrievals()
            except StoreError as exc:
                logger.warning("%s", exc)
        return DeleteResult(removed=tuple(unique), failed=())

    async def message_changed(self, key: str) -> None:
        """The index (storage/mbox_index.py) goes: the next open parses the file again."""
        with contextlib.suppress(Exception):
            await self._in_worker(partial(drop_index, self.path))

    async def close(self) -> None:
        """Release both locks (RFC 1939 section 6), once running reads have stopped.
        Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        if not self._inflight:
            self._lock.release()
            return
        waiter = asyncio.gather(*self._inflight, return_exceptions=True)
        waiter.add_done_callback(lambda _: self._lock.release())
        await asyncio.shield(waiter)

    async def _save_retrievals(self) -> None:
        try:
            await self._in_worker(partial(save_retrievals, self.path, dict(self._retrievals)))
        except OSError as exc:
            raise StoreError(f"cannot save retrieval times of {self.path!r}: {exc}") from exc

    def _start_work(self, func: Callable[[], _T]) -> asyncio.Future[_T]:
        future = asyncio.get_running_loop().run_in_executor(None, func)
        self._inflight.add(future)
        future.add_done_callback(self._work_done)
        return future

    def _work_done(self, future: asyncio.Future[Any]) -> None:
        self._inflight.discard(future)
        if not future.cancelled():
            future.exception()  # retrieved: whoever awaited it may have been cancelled

    async def _in_worker(self, func: Callable[[], _T]) -> _T:
        # Shielded: a cancelled caller leaves the job running; close() waits for it.
        return await asyncio.shield(self._start_work(func))

    def _schedule_refresh(self) -> None:
        loop = asyncio.get_running_loop()
        self._refresher = loop.call_later(self._refresh_interval, self._refresh)

    def _refresh(self) -> None:
        if self._closed:
            return
        self._start_work(self._lock.touch)
        self._schedule_refresh()


def _rewrite_and_index(
    lock: MboxLock,
    mbox_format: MboxFormat,
    parsed: Parsed,
    size: int,
    ranges: list[tuple[int, int]],
) -> None:
    """UPDATE's rewrite, then the index of the new file (computed, not parsed)."""
    rewrite_without(lock, size, ranges)
    try:
        after_rewrite(lock.fd, lock.path, mbox_format, parsed, ranges)
    except Exception:  # the messages are gone: only the index may be wrong, so it goes
        logger.exception("mbox %r: cannot index the rewritten file", lock.path)
        drop_index(lock.path)


def _stamp(fd: int, path: str) -> tuple[int, int, int]:
    try:
        status = os.fstat(fd)
    except OSError as exc:
        raise StoreError(f"cannot stat mbox {path!r}: {exc.strerror}") from exc
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns


def _check_unchanged(fd: int, path: str, stamp: _Stamp) -> None:
    """While we hold the locks, writers that lock wait: a write (or chmod, truncate ...)
    since the snapshot comes from a program that ignores them. The data at the listed
    offsets may be another message's now (a rewrite in place), so serve nothing."""
    if stamp is not None and _stamp(fd, path) != stamp:
        raise StoreError(f"mbox {path!r} changed under the session (by a program ignoring locks)")


def _first_blocks(
    fd: int, entry: MboxEntry, stream: MessageStream, path: str, stamp: _Stamp
) -> list[bytes]:
    _check_unchanged(fd, path, stamp)
    if not is_separator_at(fd, entry.separator):  # changed within the clock's resolution
        drop_index(path)
        raise StoreError(f"mbox {path!r} changed under the session near message {entry.info.key!r}")
    return _next_blocks(fd, stream, path, stamp)


def _next_blocks(fd: int, stream: MessageStream, path: str, stamp: _Stamp) -> list[bytes]:
    blocks = stream.next_blocks(_BLOCKS_PER_HOP)
    _check_unchanged(fd, path, stamp)  # after reading: what was read is what was listed
    return blocks
