"""Making directory operations durable: the one fsync every store needs after a rename,
a link or an unlink (Maildir and mbox both rely on directory entries surviving a crash)."""

from __future__ import annotations

import errno
import logging
import os


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
