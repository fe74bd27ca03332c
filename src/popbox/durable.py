"""Making file operations durable: the one fsync every store needs after a rename, a
link or an unlink (Maildir and mbox both rely on directory entries surviving a crash),
and the replacement of a whole file that leaves either the old one or the new one (the
passwd-file's edits, the mbox's index and retrieval cache)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO


def fsync_directory(directory: str) -> None:
    """fsync `directory`. File systems that cannot fsync a directory (EINVAL) are
    tolerated; any other failure raises OSError."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def fsync_directory_or_log(directory: str, logger: logging.Logger) -> None:
    """fsync `directory` after an operation that cannot be undone any more: a failure is
    logged, not raised."""
    try:
        fsync_directory(directory)
    except OSError as exc:
        logger.warning("cannot fsync %r: %s", directory, exc)


@contextlib.contextmanager
def replacing(
    path: str, *, prefix: str, suffix: str = "", mode: int, durable: bool
) -> Iterator[BinaryIO]:
    """Yield a new temporary file next to `path` (mode `mode`), to write; when the block
    ends, fsync it if `durable` and rename it over `path`, so that a crash leaves the old
    file or the new one. On any exception the temporary file is removed and the exception
    raised again. (The rename itself is durable once the directory is fsynced.)"""
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            yield file
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
