"""Locking an mbox the way the programs that write it do (Postfix local(8), procmail, mutt).

Two locks, both taken without waiting and released together, in Postfix's order:

1. a dotlock: `<mbox>.lock`, created exclusively (on Linux by link(2) of a complete
   unnamed file, elsewhere with O_CREAT|O_EXCL). It guards the file against every writer
   that dotlocks (all of the above do by default). It holds "<pid> <host>\n". It is
   stale, and is removed and taken over, when its mtime is older than `dotlock_stale`
   seconds (the rule of Postfix's stale_lock_time and procmail's lockfile), or when it
   carries our format, names this host and a process that no longer exists (a popbox
   killed with SIGKILL: no waiting for the timeout). The holder keeps it fresh with
   touch(), so that a long session is never taken for stale.
2. an fcntl write lock on the whole mbox file (Postfix's and mutt's default kernel lock).
   On Linux it is an open-file-description lock (F_OFD_SETLK): it conflicts with the
   classic F_SETLK locks of other programs and, unlike them, also with another open in this
   same process, and is not dropped when some other descriptor of the file is closed.
   Elsewhere we fall back to F_SETLK (lockf). It goes away when the process dies.

A session takes both once and gets MaildropLocked if either is held (RFC 1939 section 8:
the exclusive-access lock); delivery polls for up to `lock_timeout` seconds. Each attempt
is all or nothing, so no two lockers can deadlock waiting on each other's second lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import stat
import struct
import time
from typing import Final

from popbox.storage.base import StoreError

__all__ = ["DOTLOCK_SUFFIX", "DotLock", "MboxLock", "kernel_lock", "kernel_unlock"]

logger = logging.getLogger(__name__)

DOTLOCK_SUFFIX: Final = ".lock"

# Mailboxes are private to their owner (Postfix, procmail and mutt create them 0600).
MBOX_MODE: Final = 0o600
_DOTLOCK_MODE: Final = 0o600

_DOTLOCK_CONTENT = re.compile(rb"(\d{1,10}) ([^\s]{1,255})\n")

# Polling while delivery waits for a session: quick at first, then at most 4 times a
# second (Postfix's deliver_flock retries once a second; we can afford to be prompter).
_POLL_FIRST: Final = 0.01
_POLL_MAX: Final = 0.25
_sleep = time.sleep  # replaced by tests to observe the waiting

# O_NONBLOCK: a fifo planted in place of the mbox must not hang us (no effect on files).
_OPEN_FLAGS: Final = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK

# struct flock for F_OFD_SETLK: short l_type, short l_whence, off_t l_start, off_t l_len,
# pid_t l_pid (0 for OFD locks), padded to the struct's alignment ("0q").
_FLOCK: Final = "hhqqi0q"
_OFD_SETLK: Final = getattr(fcntl, "F_OFD_SETLK", None)

# Linux: unnamed files linked into place through /proc (see _create_exclusive).
_TMPFILE: Final[int | None] = getattr(os, "O_TMPFILE", None)
_PROC_FD: Final = os.path.isdir("/proc/self/fd")


def kernel_lock(fd: int) -> bool:
    """Take the fcntl write lock on the whole file without waiting; False if it is held."""
    try:
        if _OFD_SETLK is not None:
            fcntl.fcntl(fd, _OFD_SETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        else:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise StoreError(f"cannot lock mbox: {exc.strerror}") from exc
    return True


def kernel_unlock(fd: int) -> None:
    with contextlib.suppress(OSError):  # closing the descriptor releases it anyway
        if _OFD_SETLK is not None:
            fcntl.fcntl(fd, _OFD_SETLK, struct.pack(_FLOCK, fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0))
        else:
            fcntl.lockf(fd, fcntl.LOCK_UN)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _holder_is_dead(path: str) -> bool:
    """Whether the dotlock names a process of this host that no longer exists."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        match = _DOTLOCK_CONTENT.fullmatch(os.read(fd, 300))
    except OSError:
        return False
    finally:
        os.close(fd)
    if match is None or match.group(2) != socket.gethostname().encode():
        return False  # another program's lock, or another host's: the mtime rule only
    pid = int(match.group(1))
    return pid > 0 and not _process_exists(pid)


def _remove_if_stale(path: str, stale_after: float) -> bool:
    """Remove the dotlock if it is stale; True if it is gone (so a new try may succeed)."""
    try:
        seen = os.lstat(path)
    except FileNotFoundError:
        return True
    age = time.time() - seen.st_mtime
    if age <= stale_after and not _holder_is_dead(path):
        return False
    try:
        now = os.lstat(path)
        # Only the file we judged: another process may have taken over meanwhile.
        if (now.st_ino, now.st_mtime_ns) != (seen.st_ino, seen.st_mtime_ns):
            return False
        os.unlink(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise StoreError(f"cannot remove stale dotlock {path!r}: {exc.strerror}") from exc
    logger.warning("removed stale dotlock %r (age %.0f s)", path, age)
    return True


def _create_exclusive(path: str, content: bytes) -> int:
    """Create `path` holding `content`, failing with FileExistsError if it exists.

    On Linux the file is written unnamed (O_TMPFILE) and then linked into place, so that
    nobody ever sees it (and a SIGKILL never leaves it) without our PID in it: an empty
    lock could only age out. Elsewhere: O_CREAT|O_EXCL, then the write.
    """
    if _TMPFILE is not None and _PROC_FD:
        fd = _link_unnamed(path, content)
        if fd >= 0:
            return fd
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, _DOTLOCK_MODE)
    try:
        os.write(fd, content)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return fd


def _link_unnamed(path: str, content: bytes) -> int:
    """The O_TMPFILE way of _create_exclusive; -1 if the file system cannot do it."""
    assert _TMPFILE is not None
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = os.open(
                ".", _TMPFILE | os.O_WRONLY | os.O_CLOEXEC, _DOTLOCK_MODE, dir_fd=directory
            )
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                return -1
            raise
        try:
            os.write(fd, content)
            # A dst_dir_fd makes this linkat(AT_SYMLINK_FOLLOW): the /proc link is followed.
            os.link(f"/proc/self/fd/{fd}", os.path.basename(path), dst_dir_fd=directory)
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(directory)


class DotLock:
    """`<mbox>.lock`, created exclusively; held until release()."""

    __slots__ = ("_fd", "path")

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def try_acquire(cls, path: str, stale_after: float) -> DotLock | None:
        """Create the dotlock; None if a live one exists. Raises StoreError, and
        FileNotFoundError if the directory does not exist."""
        content = f"{os.getpid()} {socket.gethostname()}\n".encode()
        for _ in range(2):  # the second try follows the removal of a stale lock
            try:
                fd = _create_exclusive(path, content)
            except FileExistsError:
                if _remove_if_stale(path, stale_after):
                    continue
                return None
            except FileNotFoundError:
                raise
            except OSError as exc:
                raise StoreError(f"cannot create dotlock {path!r}: {exc.strerror}") from exc
            return cls(fd, path)
        return None

    def touch(self) -> None:
        """Renew the mtime, so that nobody takes a long-held lock for stale."""
        if self._fd >= 0:
            try:
                os.utime(self._fd)
            except OSError as exc:
                logger.warning("cannot refresh dotlock %r: %s", self.path, exc)

    def release(self) -> None:
        """Remove the dotlock if it is still ours. Safe to call more than once."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            ours = os.fstat(fd)
            found = os.lstat(self.path)
            if (found.st_dev, found.st_ino) == (ours.st_dev, ours.st_ino):
                os.unlink(self.path)
            else:
                logger.warning("dotlock %r was taken over meanwhile", self.path)
        except OSError as exc:
            logger.warning("cannot remove dotlock %r: %s", self.path, exc)
        finally:
            os.close(fd)


class MboxLock:
    """Both locks on one mbox, with the mbox open read-write (fd -1: no mbox file yet)."""

    __slots__ = ("_dotlock", "fd", "path")

    def __init__(self, path: str, dotlock: DotLock | None, fd: int) -> None:
        self.path = path
        self._dotlock = dotlock
        self.fd = fd

    @classmethod
    def try_acquire(cls, path: str, *, stale_after: float, create: bool) -> MboxLock | None:
        """Both locks at once, or None if either is held elsewhere. With `create`, the
        mbox (and its directory) are created if missing; without, a missing mbox is locked
        by its dotlock alone and a missing directory by nothing (there is no mail)."""
        directory = os.path.dirname(path) or "."
        if create:
            try:
                os.makedirs(directory, 0o700, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create {directory!r}: {exc.strerror}") from exc
        try:
            dotlock = DotLock.try_acquire(path + DOTLOCK_SUFFIX, stale_after)
        except FileNotFoundError as exc:
            if create:
                raise StoreError(f"cannot create dotlock for {path!r}: {exc}") from exc
            return cls(path, None, -1)
        if dotlock is None:
            return None
        try:
            fd = _open_mbox(path, create)
            if fd >= 0 and not kernel_lock(fd):
                os.close(fd)
                dotlock.release()
                return None
        except BaseException:
            dotlock.release()
            raise
        return cls(path, dotlock, fd)

    @classmethod
    def acquire_waiting(cls, path: str, *, stale_after: float, timeout: float) -> MboxLock:
        """Both locks, creating the mbox; wait up to `timeout` s. StoreError on timeout."""
        deadline = time.monotonic() + timeout
        delay = _POLL_FIRST
        while True:
            lock = cls.try_acquire(path, stale_after=stale_after, create=True)
            if lock is not None:
                return lock
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreError(f"mbox {path!r} stayed locked for {timeout:g} s")
            _sleep(min(delay, remaining))
            delay = min(delay * 2, _POLL_MAX)

    @property
    def has_dotlock(self) -> bool:
        return self._dotlock is not None

    def touch(self) -> None:
        if self._dotlock is not None:
            self._dotlock.touch()

    def replace_fd(self, fd: int) -> None:
        """Switch to `fd` (the new file after a rewrite, already kernel-locked)."""
        old, self.fd = self.fd, fd
        if old >= 0:
            kernel_unlock(old)
            os.close(old)

    def release(self) -> None:
        """Drop both locks. Safe to call more than once."""
        fd, self.fd = self.fd, -1
        dotlock, self._dotlock = self._dotlock, None
        try:
            if fd >= 0:
                kernel_unlock(fd)
                os.close(fd)
        finally:
            if dotlock is not None:
                dotlock.release()


def _open_mbox(path: str, create: bool) -> int:
    """Open the mbox read-write (-1 if missing and not `create`), refusing non-files."""
    try:
        if create:
            try:
                fd = os.open(path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, MBOX_MODE)
            except FileExistsError:
                fd = os.open(path, _OPEN_FLAGS)
            else:
                os.fchmod(fd, MBOX_MODE)  # whatever the umask
        else:
            fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        if create:
            raise StoreError(f"mbox {path!r} vanished while being opened") from None
        return -1
    except OSError as exc:
        reason = "is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise StoreError(f"cannot open mbox {path!r}: {reason}") from exc
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise StoreError(f"mbox {path!r} is not a regular file")
        if status.st_nlink > 1:
            # As Postfix local(8) refuses: a hard link planted by another user would let
            # us write (and rewrite) a file that is not this mailbox.
            raise StoreError(f"mbox {path!r} has more than one hard link")
    except BaseException:
        os.close(fd)
        raise
    return fd
