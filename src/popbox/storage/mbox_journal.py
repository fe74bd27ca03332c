"""The append journal `<mbox>.popbox-append`: what lets an append cut short by a crash be
undone by the next locker, so that no half message is ever visible.

An append truncates the file back when it fails (storage/mbox_deliver.py), but a process
killed in the middle of write(2) (SIGKILL, OOM killer, power loss) cannot. So before
appending, popbox records where the record starts and ends, and removes the note once the
record is written and fsynced:

    <start offset> <end offset> <inode>LF

Whoever takes the mbox locks next (a POP3 session or another delivery) finds a leftover
note and, if the file now ends inside that record, truncates it back to `start`: the
record was never acknowledged (LMTP answers after the append), so the sender retries and
nothing is lost. A file that ends exactly at `end` holds the whole record: it stays (at
worst the retry delivers a duplicate). Anything else means another program appended after
the crash (after taking the dead process's locks): the file is left alone and the case is
logged, since cutting would remove that program's mail.

Blocking file work, with the mbox locks held: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Final

from popbox.durable import fsync_directory_or_log
from popbox.storage.mbox_format import pread_exact

__all__ = ["JOURNAL_SUFFIX", "begin_append", "end_append", "recover_append"]

logger = logging.getLogger(__name__)

JOURNAL_SUFFIX: Final = ".popbox-append"
_NOTE = re.compile(rb"(\d{1,19}) (\d{1,19}) (\d{1,19})\n")
_SEPARATOR_AFTER_LINE: Final = b"\nFrom "
_BLOCK: Final = 1 << 20


def begin_append(path: str, start: int, end: int, inode: int) -> None:
    """Record the append about to be made, durably. Raises OSError."""
    journal = path + JOURNAL_SUFFIX
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(journal, flags, 0o600)
    try:
        os.write(fd, b"%d %d %d\n" % (start, end, inode))
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory_or_log(os.path.dirname(path) or ".", logger)


def end_append(path: str) -> None:
    """The record is whole and durable: drop the note."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path + JOURNAL_SUFFIX)


def recover_append(path: str, fd: int) -> None:
    """Undo an append a crash left half done (see the module text). `fd` is the locked
    mbox, open for writing. Never raises for the note itself: a bad one is logged."""
    journal = path + JOURNAL_SUFFIX
    try:
        note = _read_note(journal)
    except FileNotFoundError:
        return
    except OSError as exc:
        logger.error("cannot read the append journal %r: %s", journal, exc)
        return
    match = _NOTE.fullmatch(note)
    try:
        if match is None:
            logger.error("ignoring a malformed append journal %r", journal)
        else:
            start, end, inode = map(int, match.groups())
            _recover(path, fd, start, end, inode)
    except OSError as exc:
        logger.error("cannot undo the interrupted append to %r: %s", path, exc)
        return  # the note stays for the next try
    end_append(path)


def _read_note(journal: str) -> bytes:
    fd = os.open(journal, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return os.read(fd, 128)
    finally:
        os.close(fd)


def _recover(path: str, fd: int, start: int, end: int, inode: int) -> None:
    st = os.fstat(fd)
    size = st.st_size
    if st.st_ino != inode or size in (start, end):
        return  # another file now, nothing written, or the whole record: keep it
    if start < size < end and not _foreign_record(fd, start, size):
        os.ftruncate(fd, start)
        os.fsync(fd)
        logger.warning(
            "removed a partial message (%d octets) left in %r by an interrupted delivery",
            size - start,
            path,
        )
        return
    logger.error(
        "mbox %r changed after an interrupted delivery (now %d octets, the append was "
        "%d-%d); left as it is",
        path,
        size,
        start,
        end,
    )


def _foreign_record(fd: int, start: int, size: int) -> bool:
    """Whether a second separator follows ours in [start, size): another program appended
    after the crash. Our record holds one separator, after at most two line ends (its
    lead), and its body is quoted (storage/mbox_format.py): no other line starts with
    "From ". Read in blocks, overlapping by the pattern's length."""
    position = start + 2  # past our own "\nFrom " (it starts at start or start + 1)
    carry = b""
    while position < size:
        length = min(_BLOCK, size - position)
        block = carry + pread_exact(fd, length, position)
        if _SEPARATOR_AFTER_LINE in block:
            return True
        carry = block[-(len(_SEPARATOR_AFTER_LINE) - 1) :]
        position += length
    return False
