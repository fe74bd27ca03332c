"""The per-maildrop cache `popbox-cache`: what popbox learnt about each message once, so a
big maildrop opens without touching every message file.

A versioned text file, stored by column so that 100,000 entries parse with a few splits
instead of a Python loop per line (a row per message took longer to parse than to list the
maildrop):

    popbox-cache<TAB>1<TAB><uidl settings><TAB><count>
    octets<TAB><n> <n> ...              wire sizes (RFC 1939 section 11)
    delivered<TAB><ns> <ns> ...         delivery times ordering the listing (name or mtime)
    rank<TAB><n> <n> ...                the migration source's order (storage/maildir_uidl.py)
    uidl<TAB><id> <id> ...              unique-ids handed out (RFC 1939 section 7)
    retrieved<TAB><t|-> <t|-> ...       first RETR, Unix time, or "-" (RFC 2449 6.7 EXPIRE)
    names
    <base name>                         one per line, in the same order as the columns
    ...
    end

Entries are in listing order. Unique-ids hold no space (0x21-0x7E), so a space separates
them; base names may hold any octet but "/" and NUL, so backslash, tab, CR and LF in them
are escaped. `uidl settings` names the UIDL rules the unique-ids and ranks were made under;
under other settings only sizes, times and retrievals are reused. "end" catches a cut file.
Anything malformed discards the whole cache: it is rebuilt from the messages, the file names
and the migration sources, which give the same unique-ids again (storage/maildir_uidl.py),
so losing it costs time, never a UIDL.

The file is replaced atomically (temp file, fsync, rename) and only while the maildrop lock
is held (storage/locking.py), so readers never see a half-written cache.

Everything here blocks: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from dataclasses import dataclass, field

from popbox.storage.durable import fsync_directory

logger = logging.getLogger(__name__)

CACHE_FILE_NAME = "popbox-cache"
_TEMP_FILE_NAME = CACHE_FILE_NAME + ".tmp"
_MAGIC = "popbox-cache"
CACHE_VERSION = 1
_COLUMNS = ("octets", "delivered", "rank", "uidl", "retrieved")
_NAMES = "names"
_END = "end\n"

# Owner-only, like the maildrop itself (storage/maildir.py _MAILDIR_MODE).
_CACHE_MODE = 0o600

# A cache larger than this is not read (a corrupt or planted file must not exhaust memory);
# 100,000 messages take about 9 MB.
MAX_CACHE_BYTES = 1 << 30

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {value[1]: key for key, value in _ESCAPES.items()}
_NEEDS_ESCAPE = re.compile(r"[\\\t\n\r]")
_ESCAPED = re.compile(r"\\(.?)", re.DOTALL)

# The whole uidl column in one match: space-separated valid unique-ids (RFC 1939 section 7).
_UIDL_COLUMN = re.compile(r"[\x21-\x7e]{1,70}(?: [\x21-\x7e]{1,70})*")

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


@dataclass(slots=True)
class CacheTable:
    """The cache in memory: one list per column, row i is one message."""

    settings: str
    names: list[str] = field(default_factory=list)
    octets: list[int] = field(default_factory=list)
    delivered_ns: list[int] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    unique_ids: list[str] = field(default_factory=list)
    first_retrieved: list[float | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def select(self, rows: list[int]) -> CacheTable:
        """A table of these rows, in this order."""
        return CacheTable(
            self.settings,
            [self.names[row] for row in rows],
            [self.octets[row] for row in rows],
            [self.delivered_ns[row] for row in rows],
            [self.ranks[row] for row in rows],
            [self.unique_ids[row] for row in rows],
            [self.first_retrieved[row] for row in rows],
        )


class CorruptCache(ValueError):
    """The cache file is not one this version wrote whole."""


def cache_path(maildir: str) -> str:
    return os.path.join(maildir, CACHE_FILE_NAME)


def load_cache(maildir: str) -> CacheTable | None:
    """The cache of `maildir`, or None if there is none or it is unusable (logged)."""
    path = cache_path(maildir)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("cannot open maildrop cache %r, rebuilding it: %s", path, exc)
        return None
    try:
        size = os.fstat(fd).st_size
        if size > MAX_CACHE_BYTES:
            logger.warning("maildrop cache %r is too big (%d octets), rebuilding it", path, size)
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 22):
            chunks.append(chunk)
    except OSError as exc:
        logger.warning("cannot read maildrop cache %r, rebuilding it: %s", path, exc)
        return None
    finally:
        os.close(fd)
    try:
        return parse_cache(os.fsdecode(b"".join(chunks)))
    except CorruptCache as exc:
        logger.warning("maildrop cache %r is corrupt, rebuilding it: %s", path, exc)
        return None


def parse_cache(text: str) -> CacheTable:
    """Parse a whole cache file (decoded with os.fsdecode). Raises CorruptCache."""
    parts = text.split("\n", len(_COLUMNS) + 2)
    if len(parts) != len(_COLUMNS) + 3:
        raise CorruptCache("too short")
    header = parts[0].split("\t")
    if len(header) != 4 or header[0] != _MAGIC or header[1] != str(CACHE_VERSION):
        raise CorruptCache(f"unknown header {parts[0][:80]!r}")
    count = _count(header[3])
    columns = []
    for label, line in zip(_COLUMNS, parts[1:], strict=False):
        name, tab, values = line.partition("\t")
        if name != label or not tab:
            raise CorruptCache(f"expected the {label} column")
        items = values.split(" ") if count else []
        if len(items) != count or (not count and values):
            raise CorruptCache(f"{label}: {len(items)} values for {count} messages")
        columns.append(items)
    if parts[len(_COLUMNS) + 1] != _NAMES:
        raise CorruptCache("expected the names")
    names = _parse_names(parts[-1], count)
    octets, delivered, ranks, unique_ids, retrieved = columns
    if count and not _UIDL_COLUMN.fullmatch(" ".join(unique_ids)):
        raise CorruptCache("an invalid unique-id")
    return CacheTable(
        settings=header[2],
        names=names,
        octets=_numbers(octets, "octets"),
        delivered_ns=_numbers(delivered, "delivered"),
        ranks=_numbers(ranks, "rank"),
        unique_ids=unique_ids,
        first_retrieved=[None if item == "-" else _retrieval_time(item) for item in retrieved],
    )


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise CorruptCache(f"bad count {text[:20]!r}")
    return int(text)


def _parse_names(tail: str, count: int) -> list[str]:
    if not tail.endswith(_END):
        raise CorruptCache("no end line: the file was cut")
    body = tail[: -len(_END)]
    names = body.split("\n")[:-1] if body else []
    if len(names) != count or (body and not body.endswith("\n")):
        raise CorruptCache(f"{len(names)} names for {count} messages")
    if "\\" in body:
        names = [_ESCAPED.sub(_unescape, name) if "\\" in name else name for name in names]
    if len(set(names)) != count or "" in names:
        raise CorruptCache("an empty or repeated name")
    return names


def _numbers(items: list[str], label: str) -> list[int]:
    try:
        numbers = list(map(int, items))
    except ValueError:
        raise CorruptCache(f"{label}: not a number") from None
    if numbers and min(numbers) < 0:
        raise CorruptCache(f"{label}: negative")
    return numbers


def _retrieval_time(text: str) -> float:
    try:
        when = float(text)
    except ValueError:
        raise CorruptCache("retrieved: not a time") from None
    if not math.isfinite(when) or when < 0:
        raise CorruptCache("retrieved: not a time")
    return when


def _unescape(match: re.Match[str]) -> str:
    unescaped = _UNESCAPES.get(match.group(1))
    if unescaped is None:
        raise CorruptCache("a bad escape in a name")
    return unescaped


def _escape(match: re.Match[str]) -> str:
    return _ESCAPES[match.group(0)]


def _any_needs_escape(names: list[str]) -> bool:
    """One pass over all names at once: such names are rare."""
    blob = "\n".join(names)
    if blob.count("\n") != max(len(names) - 1, 0):
        return True  # a name holds a line feed
    return "\\" in blob or "\t" in blob or "\r" in blob


def format_cache(table: CacheTable) -> str:
    """The file text for `table`."""
    names = table.names
    if _any_needs_escape(names):
        names = [_NEEDS_ESCAPE.sub(_escape, name) for name in names]
    retrieved = ["-" if when is None else repr(when) for when in table.first_retrieved]
    lines = [
        f"{_MAGIC}\t{CACHE_VERSION}\t{table.settings}\t{len(table)}",
        "octets\t" + " ".join(map(str, table.octets)),
        "delivered\t" + " ".join(map(str, table.delivered_ns)),
        "rank\t" + " ".join(map(str, table.ranks)),
        "uidl\t" + " ".join(table.unique_ids),
        "retrieved\t" + " ".join(retrieved),
        _NAMES,
        *names,
    ]
    return "\n".join(lines) + "\n" + _END


def write_cache(maildir: str, table: CacheTable) -> None:
    """Replace the cache atomically: a crash leaves the old file or the new one, whole.
    Call with the maildrop lock held. Raises OSError."""
    data = os.fsencode(format_cache(table))
    temp = os.path.join(maildir, _TEMP_FILE_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)  # left by a crash; O_EXCL below refuses anything in its place
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _CACHE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    os.close(fd)
    os.rename(temp, cache_path(maildir))
    _sync_directory(maildir)


def _sync_directory(directory: str) -> None:
    """fsync the directory so the rename survives a crash."""
    fsync_directory(directory)
