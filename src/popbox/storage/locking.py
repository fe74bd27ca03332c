"""The maildrop's exclusive-access lock (RFC 1939 section 8) for file-based stores.

"the POP3 server then acquires an exclusive-access lock on the maildrop" (RFC 1939 section
8). We take flock(2) LOCK_EX on a lock file inside the maildrop. flock locks belong to the
open file description, so:
- two opens conflict whether they come from one process or from two;
- the lock lasts while the descriptor is open and goes away when it is closed or when the
  holding process dies (no stale lock files to clean up; the file itself is never deleted).
The descriptor is O_CLOEXEC so that a spawned program does not inherit the lock; a child
made by a bare fork() would share it, so worker processes must fork before opening
maildrops.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from popbox.storage.base import MaildropLocked, StoreError

# The lock file in the maildrop's top directory; created if absent, never deleted. It is
# outside new/ and cur/, so Maildir readers never take it for a message.
LOCK_FILE_NAME = "popbox-pop3.lock"

# Created owner-only: the lock file carries no data, nobody else needs it.
_LOCK_FILE_MODE = 0o600

# open(2) errors that mean "not writable here" rather than "broken".
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def _open_lock_file(path: str) -> int:
    """Open (creating it if missing) the lock file. On a store we may not write (a
    read-only mount, a maildrop whose modes forbid it) an existing lock file is opened
    read-only: flock(2) needs no write access, and reading the maildrop needs nothing
    more, so such a maildrop can still be served (its UPDATE then fails and says so)."""
    # O_NOFOLLOW: a symlink planted in a user-writable maildrop must not make us
    # create or lock a file elsewhere.
    flags = os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        return os.open(path, flags | os.O_RDWR | os.O_CREAT, _LOCK_FILE_MODE)
    except OSError as exc:
        if exc.errno not in _NOT_WRITABLE:
            raise StoreError(f"cannot open lock file {path!r}: {exc.strerror}") from exc
        refused = exc
    try:
        return os.open(path, flags | os.O_RDONLY)
    except OSError as exc:
        # Missing and not creatable here: no lock can be taken, so no session.
        raise StoreError(f"cannot open lock file {path!r}: {refused.strerror}") from exc


class MaildropLock:
    """An exclusive flock(2) on `<directory>/popbox-pop3.lock`, held until release()."""

    __slots__ = ("_fd", "path")

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def acquire(cls, directory: str) -> MaildropLock:
        """Take the lock without waiting. Blocking I/O: call it from a worker thread, or
        on the event loop where a slow call is noticed (storage/maildir_inline.py).

        Raises MaildropLocked if another open holds it, StoreError on any other failure.
        """
        path = os.path.join(directory, LOCK_FILE_NAME)
        fd = _open_lock_file(path)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(f"lock file {path!r} is not a regular file")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise MaildropLocked(f"maildrop {directory!r} is locked by another session") from exc
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock {path!r}: {exc.strerror}") from exc
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path)

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        """Drop the lock. Safe to call more than once."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            # Explicit unlock: releases the lock even if a forked child shares the
            # descriptor; closing alone would leave the lock with the child.
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass  # close() below releases it anyway
        finally:
            os.close(fd)
