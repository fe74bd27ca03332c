"""UPDATE for an mbox (RFC 1939 section 6): remove records by rewriting the file.

With both locks held, the file is checked against the snapshot (same file, not shorter,
every removed record still where it was); then the kept bytes (the ranges between the
removed records, and whatever was appended after the snapshot) are copied to a temporary
file in the same directory, which gets the mbox's owner, group and mode, is fsynced and
kernel-locked, and is renamed over the mbox; then the directory is fsynced. A crash (even
SIGKILL) at any point leaves the old file or the new one, never a mix; at worst a hidden
temporary file, removed by the next rewrite.

Caveat: rename gives the mbox a new inode. A writer that takes only the fcntl lock and
keeps the old file open while it waits for our lock (no dotlock, or the dotlock taken
after the fcntl lock, as mutt does) would then append to the old, unlinked inode. Postfix
local(8) and procmail take the dotlock before they open the mbox, so the dotlock keeps them
out. Dovecot avoids the problem by rewriting in place, at the price of the crash safety we
want here.

Blocking file work: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Sequence

from popbox.durable import fsync_directory_or_log
from popbox.storage.base import StoreError
from popbox.storage.mbox_cache import temp_prefix
from popbox.storage.mbox_format import SCAN_BLOCK_SIZE, is_separator_at, pread_exact
from popbox.storage.mbox_lock import MboxLock, kernel_lock

__all__ = ["MboxChanged", "rewrite_without"]

logger = logging.getLogger(__name__)


class MboxChanged(StoreError):
    """The file is not the one the snapshot describes; nothing was touched."""


def rewrite_without(lock: MboxLock, snapshot_size: int, removed: Sequence[tuple[int, int]]) -> None:
    """Rewrite the locked mbox without the records `removed` ([start, end) ranges of the
    snapshot). On success `lock` holds the new file. Raises MboxChanged or StoreError;
    either way the mbox is unchanged."""
    fd, path = lock.fd, lock.path
    ranges = sorted(removed)
    try:
        status = os.fstat(fd)
        _check_unchanged(fd, path, status, snapshot_size, ranges)
        if os.geteuid() != 0 and status.st_uid != os.geteuid():
            raise StoreError(f"cannot keep the owner of {path!r} (uid {status.st_uid})")
        _remove_leftovers(path)
        temp_fd, temp_path = tempfile.mkstemp(
            dir=os.path.dirname(path) or ".", prefix=temp_prefix(path)
        )
    except OSError as exc:
        raise StoreError(f"cannot rewrite mbox {path!r}: {exc}") from exc
    try:
        _copy_attributes(temp_fd, status)
        _copy_kept(fd, temp_fd, ranges)
        os.fsync(temp_fd)
        if not kernel_lock(temp_fd):
            raise StoreError(f"temporary file {temp_path!r} is locked by someone else")
        os.replace(temp_path, path)
    except BaseException as exc:
        os.close(temp_fd)
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        if isinstance(exc, OSError):
            raise StoreError(f"cannot rewrite mbox {path!r}: {exc}") from exc
        raise
    lock.replace_fd(temp_fd)
    _sync_directory(os.path.dirname(path) or ".")


def _check_unchanged(
    fd: int, path: str, status: os.stat_result, snapshot_size: int, ranges: list[tuple[int, int]]
) -> None:
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise MboxChanged(f"mbox {path!r} was removed under us") from None
    if (named.st_dev, named.st_ino) != (status.st_dev, status.st_ino):
        raise MboxChanged(f"mbox {path!r} was replaced under us")
    if status.st_size < snapshot_size:
        raise MboxChanged(f"mbox {path!r} shrank under us")
    for start, end in ranges:
        for boundary in (start, end):
            if boundary < snapshot_size and not is_separator_at(fd, boundary):
                raise MboxChanged(f"mbox {path!r} changed under us near offset {boundary}")


def _remove_leftovers(path: str) -> None:
    """Remove temporary files a killed rewrite left behind (we hold the locks: no other
    popbox is writing any)."""
    prefix = temp_prefix(path)
    with os.scandir(os.path.dirname(path) or ".") as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _copy_attributes(temp_fd: int, status: os.stat_result) -> None:
    """Owner, group and mode of the mbox (chown first: it may clear set-id bits)."""
    if os.geteuid() == 0:
        os.fchown(temp_fd, status.st_uid, status.st_gid)
    elif os.fstat(temp_fd).st_gid != status.st_gid:
        os.fchown(temp_fd, -1, status.st_gid)  # EPERM unless we are in that group
    os.fchmod(temp_fd, stat.S_IMODE(status.st_mode))


def _copy_kept(fd: int, temp_fd: int, ranges: list[tuple[int, int]]) -> None:
    """Everything but `ranges`, through to the end of the file as it is now."""
    position = 0
    for start, end in ranges:
        _copy_range(fd, temp_fd, position, start)
        position = end
    _copy_range(fd, temp_fd, position, None)


def _copy_range(fd: int, temp_fd: int, start: int, stop: int | None) -> None:
    """Copy [start, stop) (stop None: to the end of the file)."""
    offset = start
    while stop is None or offset < stop:
        want = SCAN_BLOCK_SIZE if stop is None else min(SCAN_BLOCK_SIZE, stop - offset)
        block = os.pread(fd, want, offset) if stop is None else pread_exact(fd, want, offset)
        if not block:
            return
        offset += len(block)
        view = memoryview(block)
        while view:
            view = view[os.write(temp_fd, view) :]


def _sync_directory(directory: str) -> None:
    """Make the rename durable. It is done: a failure here is logged, not raised."""
    fsync_directory_or_log(directory, logger)
