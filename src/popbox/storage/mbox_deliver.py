"""Appending one message to an mbox, as Postfix local(8) does (shared/DESIGN.md: "mbox
append under lock, truncated back on failure").

The record written is, in RFC 4155 form:

    From <envelope sender> <asctime of the delivery, UTC>
    <the message, line ends turned into LF, separator-like lines quoted>
    <an empty line>

preceded by the line ends needed to put an empty line before the separator when the file
does not end with one (a file whose last writer left no empty line, or no final LF). Both
locks are taken first, waiting up to lock_timeout seconds for a POP3 session to finish. The
record is written at the end of the file and fsynced; on any failure the file is truncated
back to its old size, and a crash in the middle is undone by the next locker (the append
journal, storage/mbox_journal.py), so a message is in the mbox whole or not at all.

Blocking file work: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from typing import Final

from popbox.storage.base import StoreError
from popbox.storage.mbox_format import MboxFormat, pread_exact, quote_body
from popbox.storage.mbox_journal import begin_append, end_append, recover_append
from popbox.storage.mbox_lock import MboxLock

__all__ = ["DEFAULT_SENDER", "append_message", "build_record"]

logger = logging.getLogger(__name__)

# Postfix writes MAILER-DAEMON for the null sender (bounces), and so do we when the
# envelope sender is unknown.
DEFAULT_SENDER: Final = "MAILER-DAEMON"

# Octets that would break the separator line (a line end) or its fields (white space).
_UNSAFE_IN_SENDER = re.compile(rb"[\x00-\x20\x7f]")


def build_record(message: bytes, mbox_format: MboxFormat, sender: str, when: float) -> bytes:
    """The record for `message`, without the leading line ends."""
    envelope = sender.strip().removeprefix("<").removesuffix(">") or DEFAULT_SENDER
    sender_octets = _UNSAFE_IN_SENDER.sub(b"_", envelope.encode("utf-8", "replace"))
    stamp = time.asctime(time.gmtime(when)).encode("ascii")
    body = message.replace(b"\r\n", b"\n")
    if body and not body.endswith(b"\n"):
        body += b"\n"
    return b"From %s %s\n%s\n" % (sender_octets, stamp, quote_body(body, mbox_format))


def append_message(
    path: str,
    message: bytes,
    *,
    mbox_format: MboxFormat,
    sender: str = DEFAULT_SENDER,
    stale_after: float,
    timeout: float,
) -> None:
    """Append `message` to the mbox at `path` (created 0600 if missing). Raises StoreError."""
    record = build_record(message, mbox_format, sender, time.time())
    lock = MboxLock.acquire_waiting(path, stale_after=stale_after, timeout=timeout)
    try:
        recover_append(path, lock.fd)
        _append(lock.fd, path, record)
    finally:
        lock.release()


def _lead(fd: int, size: int) -> bytes:
    """The line ends that put an empty line between the file's end and a new separator."""
    if size == 0:
        return b""
    tail = pread_exact(fd, min(size, 2), size - min(size, 2))
    if tail == b"\n\n":
        return b""
    return b"\n" if tail.endswith(b"\n") else b"\n\n"


def _append(fd: int, path: str, record: bytes) -> None:
    try:
        st = os.fstat(fd)
        size = st.st_size
        data = _lead(fd, size) + record
        # A crash from here on leaves a note the next locker undoes (storage/mbox_journal.py).
        begin_append(path, size, size + len(data), st.st_ino)
    except OSError as exc:
        raise StoreError(f"cannot append to mbox {path!r}: {exc.strerror}") from exc
    try:
        os.lseek(fd, size, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException as exc:
        _truncate_back(fd, path, size)
        if isinstance(exc, OSError):
            raise StoreError(f"cannot append to mbox {path!r}: {exc.strerror}") from exc
        raise
    end_append(path)


def _truncate_back(fd: int, path: str, size: int) -> None:
    """Remove a partial record: the mbox must not end in half a message."""
    try:
        os.ftruncate(fd, size)
        with contextlib.suppress(OSError):
            os.fsync(fd)
    except OSError as exc:
        logger.critical("cannot truncate %r back to %d octets: %s", path, size, exc)
