"""The sidecar cache `<mbox>.popbox`: when each message was first retrieved (RFC 2449
section 6.7, EXPIRE counts from there). An mbox has no place for it, so it lives next to
the mbox, guarded by the mbox's locks.

The format is a line per message, after a version line:

    popbox-mbox-retrievals 1
    <unique-id> <first retrieval, Unix time>

Unique-ids hold no spaces (RFC 1939 section 7: 0x21-0x7E). It is written whole to a
temporary file and renamed over the old one, so a crash leaves the old or the new cache.
It is only a cache: a damaged line or file is ignored (those messages count as never
retrieved), which never loses mail.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Final

from popbox.durable import replacing

__all__ = [
    "CACHE_SUFFIX",
    "load_retrievals",
    "read_beside",
    "replace_beside",
    "save_retrievals",
    "temp_prefix",
]

logger = logging.getLogger(__name__)

CACHE_SUFFIX: Final = ".popbox"
_VERSION_LINE: Final = b"popbox-mbox-retrievals 1\n"
_LINE = re.compile(rb"([\x21-\x7e]{1,70}) ([0-9]{1,12}(?:\.[0-9]{1,9})?)")

# The cache is ours: nobody else needs to read it.
_CACHE_MODE: Final = 0o600
# Refuse to load a cache larger than this (a million messages' worth): it is not ours.
_MAX_CACHE_SIZE: Final = 128 * 1024 * 1024


def temp_prefix(mbox_path: str) -> str:
    """Name prefix of our temporary files next to the mbox (hidden, so that tools that list
    /var/mail do not take them for mailboxes)."""
    return f".{os.path.basename(mbox_path)}.popbox-tmp."


def read_beside(path: str, limit: int, what: str) -> bytes | None:
    """Up to `limit` + 1 octets of our file `path` next to an mbox (no symlink followed);
    None if there is none, or if it cannot be read (logged, naming it `what`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("cannot open %s %r: %s", what, path, exc)
        return None
    try:
        with os.fdopen(fd, "rb") as file:
            return file.read(limit + 1)
    except OSError as exc:
        logger.warning("cannot read %s %r: %s", what, path, exc)
        return None


def replace_beside(mbox_path: str, path: str, data: bytes, *, durable: bool) -> None:
    """Make `data` our file `path` next to the mbox: a temporary file (mode 0600, fsynced
    if `durable`) renamed over it, so a crash leaves the old file or the new one. Raises
    OSError, leaving nothing behind."""
    with replacing(path, prefix=temp_prefix(mbox_path), mode=_CACHE_MODE, durable=durable) as file:
        file.write(data)


def load_retrievals(mbox_path: str) -> dict[str, float]:
    """The cache for this mbox; empty if there is none or it cannot be read."""
    path = mbox_path + CACHE_SUFFIX
    data = read_beside(path, _MAX_CACHE_SIZE, "retrieval cache")
    if data is None:
        return {}
    if not data.startswith(_VERSION_LINE) or len(data) > _MAX_CACHE_SIZE:
        logger.warning("ignoring retrieval cache %r: not in our format", path)
        return {}
    times: dict[str, float] = {}
    for line in data[len(_VERSION_LINE) :].split(b"\n"):
        match = _LINE.fullmatch(line)
        if match is not None:
            when = float(match.group(2))
            if math.isfinite(when):
                times.setdefault(match.group(1).decode("ascii"), when)
    return times


def save_retrievals(mbox_path: str, times: Mapping[str, float]) -> None:
    """Replace the cache with `times` (removed when empty). Raises OSError."""
    path = mbox_path + CACHE_SUFFIX
    if not times:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    lines = [_VERSION_LINE]
    lines.extend(f"{uid} {when:.6f}\n".encode("ascii") for uid, when in times.items())
    replace_beside(mbox_path, path, b"".join(lines), durable=True)
