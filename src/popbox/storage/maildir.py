"""The Maildir mail store (cr.yp.to/proto/maildir.html), as Postfix and Dovecot write it.

MaildirStore.open(user) validates the user name, creates an empty maildrop if there is none
yet, takes the RFC 1939 section 8 exclusive lock (storage/locking.py) and fixes the listing
snapshot (storage/maildir_snapshot.py, with the maildrop cache of storage/maildir_cache.py
and the unique-id rules of storage/maildir_uidl.py). The returned MaildirMaildrop streams
messages in blocks, records first retrievals and removes messages at UPDATE. File-system
work runs in worker threads, so a big maildrop or a slow disk never stalls the event loop;
only small pieces (opening a maildrop whose cache is current, reading a small message the
page cache holds) run on the loop, while they stay quick (storage/maildir_inline.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, Sequence
from functools import partial
from typing import TypeVar

from popbox.durable import fsync_directory_or_log
from popbox.storage.base import (
    READ_BLOCK_SIZE,
    DeleteResult,
    InvalidMaildropUser,
    MessageGone,
    MessageInfo,
    StoreError,
)
from popbox.storage.location import check_template, expand_location, user_location
from popbox.storage.locking import MaildropLock
from popbox.storage.maildir_count import BIG_MESSAGE, count_into, count_wire_octets
from popbox.storage.maildir_deliver import deliver_to_maildir, local_hostname
from popbox.storage.maildir_inline import on_the_loop, open_if_cached, read_if_cached
from popbox.storage.maildir_listing import (
    ALL_SUBDIRS,
    MESSAGE_OPEN_FLAGS,
    MESSAGE_SUBDIRS,
    locate_message,
    scan_messages,
)
from popbox.storage.maildir_snapshot import CountFirst, MaildropCache, Snapshot, take_snapshot
from popbox.storage.maildir_uidl import UidlFormat, UidlSettings
from popbox.storage.threads import in_thread_owned, in_thread_reading

__all__ = [
    "InvalidMaildropUser",
    "MaildirMaildrop",
    "MaildirStore",
    "UidlFormat",
    "expand_location",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# A maildrop we create is private to its owner (Maildir spec; Dovecot and Postfix do the same).
_MAILDIR_MODE = 0o700

# Blocks read per worker-thread hop when streaming: fewer hops for big messages while at
# most this many READ_BLOCK_SIZE blocks (256 KiB) sit in memory per reader.
_BLOCKS_PER_HOP = 4


# Rounds of counting big new messages on the event loop before opening; a message that
# moved again each time is then counted in the snapshot's thread.
_COUNT_ROUNDS = 2


def _prepare_and_lock(maildir: str) -> MaildropLock:
    """Create the maildrop if missing (a user with no mail yet), then lock it."""
    try:
        os.makedirs(maildir, _MAILDIR_MODE, exist_ok=True)
        for sub in ALL_SUBDIRS:
            with contextlib.suppress(FileExistsError):
                os.mkdir(os.path.join(maildir, sub), _MAILDIR_MODE)
    except OSError as exc:
        raise StoreError(f"cannot create maildir {maildir!r}: {exc}") from exc
    return MaildropLock.acquire(maildir)


def _lock_and_snapshot(
    maildir: str, settings: UidlSettings, counted: dict[str, int], count_up_to: int | None
) -> tuple[MaildropLock, Snapshot]:
    lock = _prepare_and_lock(maildir)
    try:
        return lock, take_snapshot(maildir, settings, counted=counted, count_up_to=count_up_to)
    except BaseException:
        lock.release()
        raise


def _release_opened(opened: tuple[MaildropLock, Snapshot]) -> None:
    opened[0].release()


class MaildirStore:
    """Maildrops at `location_template` (e.g. "/srv/mail/%u/Maildir"), one per user.

    uidl_format: which unique-ids (RFC 1939 section 7) messages get: "popbox" (the base
    name), or, for messages that server saw, the ones Dovecot ("dovecot", from
    dovecot-uidlist) or Courier ("courier", from courierpop3dsizelist) handed out, so POP3
    clients do not download everything again after a migration. xuidl: a valid `X-UIDL:`
    header in the message wins over both. Keep both settings for a maildrop's life: other
    settings give other unique-ids (storage/maildir_uidl.py).
    """

    def __init__(
        self,
        location_template: str,
        *,
        uidl_format: UidlFormat = "popbox",
        xuidl: bool = False,
    ) -> None:
        check_template(location_template, "maildir")
        self.location_template = location_template
        self.uidl_settings = UidlSettings(format=uidl_format, xuidl=xuidl)

    def __repr__(self) -> str:
        settings = self.uidl_settings
        return (
            f"MaildirStore({self.location_template!r}, uidl_format={settings.format!r}, "
            f"xuidl={settings.xuidl!r})"
        )

    def location(self, user: str) -> str:
        """The user's maildir path. Raises InvalidMaildropUser; touches no file."""
        return user_location(self.location_template, user)

    async def open(self, user: str) -> MaildirMaildrop:
        """Lock and snapshot the user's maildrop (RFC 1939 section 8).

        Raises InvalidMaildropUser, MaildropLocked or StoreError.
        """
        maildir = self.location(user)
        opened = on_the_loop(partial(open_if_cached, maildir, self.uidl_settings), maildir)
        if opened is not None:
            return MaildirMaildrop(maildir, *opened)
        counted: dict[str, int] = {}
        for _ in range(_COUNT_ROUNDS):
            try:
                return await self._lock_and_list(maildir, counted, BIG_MESSAGE)
            except CountFirst as first:
                # Big new messages: counted on the event loop (maildir_count.py) without
                # the lock, then the maildrop is locked and listed again.
                await count_into(counted, first.paths)
        return await self._lock_and_list(maildir, counted, None)  # files that keep moving

    async def _lock_and_list(
        self, maildir: str, counted: dict[str, int], count_up_to: int | None
    ) -> MaildirMaildrop:
        # One worker-thread hop for both; a lock whose open was cancelled is released.
        lock, snapshot = await in_thread_owned(
            partial(_lock_and_snapshot, maildir, self.uidl_settings, counted, count_up_to),
            _release_opened,
        )
        return MaildirMaildrop(maildir, lock, snapshot)

    async def deliver(self, user: str, message: bytes) -> None:
        """Add one message to the user's maildrop: tmp/ -> new/, fsync'd (Maildir spec).

        Takes no lock: an open POP3 session keeps its snapshot and sees the message at
        its next open. Raises InvalidMaildropUser or StoreError.
        """
        maildir = self.location(user)
        await asyncio.to_thread(deliver_to_maildir, maildir, message, hostname=local_hostname())


class MaildirMaildrop:
    """An open, locked maildir; the listing is fixed until close()."""

    def __init__(self, maildir: str, lock: MaildropLock, snapshot: Snapshot) -> None:
        self.path = maildir
        self._lock = lock
        self._listing = snapshot.listing
        self._paths = snapshot.paths
        self._cache: MaildropCache = snapshot.cache

    def __repr__(self) -> str:
        state = "locked" if self._lock.held else "closed"
        return f"<MaildirMaildrop {self.path!r} {len(self._listing)} messages {state}>"

    @property
    def listing(self) -> Sequence[MessageInfo]:
        return self._listing

    @property
    def closed(self) -> bool:
        return not self._lock.held

    def _snapshot_path(self, key: str) -> str:
        if self.closed:
            raise StoreError(f"maildrop {self.path!r} is closed")
        # An unknown key is the caller's bug, not a vanished message.
        return self._paths[key]

    async def read(self, key: str) -> AsyncGenerator[bytes, None]:
        """Yield the message as stored, in blocks of at most READ_BLOCK_SIZE octets.

        Raises MessageGone before the first block if the message vanished, StoreError on
        other I/O errors, KeyError for a key not in the listing.
        """
        path = self._snapshot_path(key)
        if (whole := on_the_loop(partial(read_if_cached, path), path)) is not None:
            if whole:
                yield whole
            return
        # One worker-thread hop opens the file and reads its first blocks; a message that
        # fits in them (most do) is closed in that same hop.
        fd, found, blocks = await in_thread_owned(
            partial(_open_and_read, self.path, key, path), _close_opened
        )
        self._paths[key] = found
        try:
            for block in blocks:
                yield block
            while fd >= 0:
                try:
                    blocks = await in_thread_reading(fd, partial(_read_blocks, fd, found))
                except asyncio.CancelledError:
                    fd = -1  # closed when the worker is done
                    raise
                for block in blocks:
                    yield block
                if len(blocks) < _BLOCKS_PER_HOP:
                    return
        finally:
            if fd >= 0:
                os.close(fd)

    async def delete(self, keys: Sequence[str]) -> DeleteResult:
        """Unlink the messages (RFC 1939 section 6, UPDATE). Already gone counts as removed."""
        jobs = [(key, self._snapshot_path(key)) for key in dict.fromkeys(keys)]
        result = await asyncio.to_thread(_delete_messages, self.path, jobs)
        if result.removed and self._cache.forget(result.removed):
            try:
                await asyncio.to_thread(self._cache.save)
            except OSError as exc:
                # The next open drops the entries of the removed messages again.
                logger.warning("cannot write maildrop cache in %r: %s", self.path, exc)
        return result

    async def record_retrievals(self, keys: Sequence[str], when: float) -> None:
        """Remember `when` as the first retrieval time (RFC 2449 section 6.7 EXPIRE) of
        the messages that have none yet, in the maildrop cache. Raises StoreError."""
        for key in keys:
            self._snapshot_path(key)  # closed maildrop or unknown key: refused up front
        if not self._cache.record_retrievals(keys, when):
            return
        try:
            await asyncio.to_thread(self._cache.save)
        except OSError as exc:
            raise StoreError(f"cannot write maildrop cache in {self.path!r}: {exc}") from exc

    async def message_changed(self, key: str) -> None:
        """Count the message's wire size as the file is now and keep it in the cache, for
        the next open to list; the size the name's `,W=` or Dovecot's uidlist gives is
        not taken again (it was wrong, or the file was rewritten: either way a message
        that no session could retrieve, as Dovecot renames such a file). A message gone
        or unreadable loses its entry: the next open lists the maildrop again."""
        if self.closed:
            return
        try:
            octets = await count_wire_octets(self._paths[key])
        except OSError:
            changed = self._cache.forget([key])
        else:
            changed = self._cache.measured(key, octets)
        if not changed:
            return
        try:
            await asyncio.to_thread(self._cache.save)
        except OSError as exc:
            logger.warning("cannot write maildrop cache in %r: %s", self.path, exc)

    async def close(self) -> None:
        """Release the lock (RFC 1939 section 6). Safe to call more than once."""
        self._lock.release()


def _close_opened(opened: tuple[int, str, list[bytes]]) -> None:
    if opened[0] >= 0:
        os.close(opened[0])


def _open_and_read(maildir: str, key: str, path: str) -> tuple[int, str, list[bytes]]:
    """Open the message and read its first blocks: (fd, path, blocks), with fd -1 (closed)
    when the message ended within them."""
    fd, found = _open_message(maildir, key, path)
    try:
        blocks = _read_blocks(fd, found)
    except BaseException:
        os.close(fd)
        raise
    if len(blocks) < _BLOCKS_PER_HOP:
        os.close(fd)
        fd = -1
    return fd, found, blocks


def _open_message(maildir: str, key: str, path: str) -> tuple[int, str]:
    """Open the message, following it if another agent moved it or changed its flags."""
    try:
        return os.open(path, MESSAGE_OPEN_FLAGS), path
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot open message {path!r}: {exc.strerror}") from exc
    try:
        moved = locate_message(maildir, key)
        if moved is None:
            raise MessageGone(f"message {key!r} is gone from {maildir!r}")
        return os.open(moved, MESSAGE_OPEN_FLAGS), moved
    except FileNotFoundError as exc:
        raise MessageGone(f"message {key!r} is gone from {maildir!r}") from exc
    except OSError as exc:
        raise StoreError(f"cannot open message {key!r} in {maildir!r}: {exc}") from exc


def _read_blocks(fd: int, path: str) -> list[bytes]:
    """Up to _BLOCKS_PER_HOP full blocks; fewer only at end of file."""
    blocks: list[bytes] = []
    pending = b""
    try:
        while len(blocks) < _BLOCKS_PER_HOP:
            chunk = os.read(fd, READ_BLOCK_SIZE - len(pending))
            if not chunk:
                break
            pending += chunk
            if len(pending) == READ_BLOCK_SIZE:
                blocks.append(pending)
                pending = b""
    except OSError as exc:
        raise StoreError(f"cannot read message {path!r}: {exc.strerror}") from exc
    if pending:
        blocks.append(pending)
    return blocks


def _delete_messages(maildir: str, jobs: list[tuple[str, str]]) -> DeleteResult:
    removed: list[str] = []
    failed: list[str] = []
    current: dict[str, list[str]] | None = None  # scanned on the first moved message
    for key, path in jobs:
        try:
            if not _unlink_if_present(path):
                if current is None:
                    current = scan_messages(maildir)
                for moved in current.get(key, ()):
                    _unlink_if_present(moved)
            removed.append(key)
        except OSError as exc:
            logger.error("cannot delete message %r in %r: %s", key, maildir, exc)
            failed.append(key)
    _sync_directories(maildir)
    return DeleteResult(removed=tuple(removed), failed=tuple(failed))


def _unlink_if_present(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _sync_directories(maildir: str) -> None:
    """fsync new/ and cur/ so the unlinks survive a crash (Maildir relies on directory
    operations being durable). A failure here cannot undo the unlinks: log it only."""
    for sub in MESSAGE_SUBDIRS:
        fsync_directory_or_log(os.path.join(maildir, sub), logger)
