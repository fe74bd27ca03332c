"""The per-maildrop cache `popbox-cache`: what popbox learnt about each message once, so a
big maildrop opens without touching every message file, and, while new/ and cur/ have not
changed since they were last listed, without listing them either.

Version 2, stored by column in binary so that 100,000 entries load with a handful of bulk
operations (array.frombytes, one split per text column) and no Python step per message:

    popbox-cache<TAB>2<TAB><uidl settings><TAB><count><TAB><stamps>LF
    octets <n>LF      <n octets: int64s, little-endian>LF   wire sizes (RFC 1939 sec. 11)
    delivered <n>LF   <int64 ns>             delivery times ordering the listing
    rank <n>LF        <int64>                the migration source's order (maildir_uidl.py)
    retrieved <n>LF   <float64, NaN: never>  first RETR, Unix time (RFC 2449 6.7 EXPIRE)
    names <n>LF       <base names, NUL-separated, file-system bytes>
    uidl <n>LF        <unique-ids, NUL-separated; empty: the same as the base name>
    places <n>LF      <"n" or "c" (new/, cur/) + the name's info part, NUL-separated>
    end <crc32 of everything above, 8 hex digits>LF

(each section ends with LF after its n octets).

`stamps` are the mtimes and inodes of new/ and cur/ taken before the listing the file
holds (storage/maildir_listing.py DirStamps), or "-". Entries are in listing order. A
file name holds neither "/" nor NUL, so NUL separates names without escaping. Anything
malformed discards the whole cache: it is rebuilt from the messages, the file names and the
migration sources, which give the same unique-ids again (storage/maildir_uidl.py), so
losing it costs time, never a UIDL. Version 1 (text, storage/maildir_cache_v1.py) is still
read, so an upgrade keeps the recorded retrieval times.

The file is replaced atomically (temp file, fsync, rename) and only while the maildrop lock
is held (storage/locking.py), so readers never see a half-written cache.

Everything here blocks: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
import sys
import zlib
from array import array
from dataclasses import dataclass, field

from popbox.durable import fsync_directory
from popbox.storage.maildir_listing import UIDL_MAX_LENGTH, DirStamps, valid_places

logger = logging.getLogger(__name__)

CACHE_FILE_NAME = "popbox-cache"
_TEMP_FILE_NAME = CACHE_FILE_NAME + ".tmp"
_MAGIC = b"popbox-cache"
CACHE_VERSION = 2
_NUMBER_COLUMNS = (b"octets", b"delivered", b"rank")
_TEXT_COLUMNS = (b"names", b"uidl", b"places")
_SEPARATOR = "\0"

# Owner-only, like the maildrop itself (storage/maildir.py _MAILDIR_MODE).
_CACHE_MODE = 0o600

# A cache larger than this is not read (a corrupt or planted file must not exhaust memory);
# 100,000 messages take about 9 MB.
MAX_CACHE_BYTES = 1 << 30

# RFC 1939 section 7: unique-ids are 0x21-0x7E; with the NUL separator, nothing else may
# appear in the uidl column.
_UIDL_ALPHABET = bytes(range(0x21, 0x7F)) + b"\0"

# "Never retrieved" as written: a NaN, little-endian.
_NEVER = struct.pack("<d", math.nan)


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
    # Where each file is: "n"/"c" (new/, cur/) plus the info part; empty if not known.
    places: list[str] = field(default_factory=list)
    stamps: DirStamps | None = None

    def __len__(self) -> int:
        return len(self.names)

    def select(self, rows: list[int]) -> CacheTable:
        """A table of these rows, in this order."""
        places = self.places
        return CacheTable(
            self.settings,
            [self.names[row] for row in rows],
            [self.octets[row] for row in rows],
            [self.delivered_ns[row] for row in rows],
            [self.ranks[row] for row in rows],
            [self.unique_ids[row] for row in rows],
            [self.first_retrieved[row] for row in rows],
            [places[row] for row in rows] if len(places) == len(self.names) else [],
            self.stamps,
        )


class CorruptCache(ValueError):
    """The cache file is not one this version wrote whole."""


def cache_path(maildir: str) -> str:
    return os.path.join(maildir, CACHE_FILE_NAME)


def load_cache(
    maildir: str, *, warn: bool = True, up_to: int = MAX_CACHE_BYTES
) -> CacheTable | None:
    """The cache of `maildir`, or None if there is none, if it is bigger than `up_to`
    octets, or if it is unusable (logged, unless not `warn`: a caller that falls back to
    one that does)."""
    path = cache_path(maildir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _unusable(warn, "cannot open maildrop cache %r, rebuilding it: %s", path, exc)
        return None
    try:
        size = os.fstat(fd).st_size
        if MAX_CACHE_BYTES >= size > up_to:
            return None
        if size > MAX_CACHE_BYTES:
            _unusable(warn, "maildrop cache %r is too big (%d octets), rebuilding it", path, size)
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 24):
            chunks.append(chunk)
    except OSError as exc:
        _unusable(warn, "cannot read maildrop cache %r, rebuilding it: %s", path, exc)
        return None
    finally:
        os.close(fd)
    try:
        return parse_cache(b"".join(chunks))
    except CorruptCache as exc:
        _unusable(warn, "maildrop cache %r is corrupt, rebuilding it: %s", path, exc)
        return None


def _unusable(warn: bool, message: str, *args: object) -> None:
    if warn:
        logger.warning(message, *args)


def parse_cache(data: bytes) -> CacheTable:
    """Parse a whole cache file, version 2 or 1. Raises CorruptCache."""
    if data.startswith(_MAGIC + b"\t1\t"):
        from popbox.storage.maildir_cache_v1 import parse_cache_v1  # noqa: PLC0415

        return parse_cache_v1(os.fsdecode(data))
    body, _, trailer = data.rpartition(b"\nend ")
    if len(trailer) != 9 or trailer[-1:] != b"\n":
        raise CorruptCache("no end line: the file was cut")
    body += b"\n"
    if trailer[:8] != b"%08x" % zlib.crc32(body):
        raise CorruptCache("checksum mismatch")
    header, _, rest = body.partition(b"\n")
    fields = header.split(b"\t")
    if len(fields) != 5 or fields[0] != _MAGIC or fields[1] != b"%d" % CACHE_VERSION:
        raise CorruptCache(f"unknown header {header[:80]!r}")
    count = _count(fields[3])
    sections = _sections(memoryview(rest), count)
    octets, delivered, ranks = (_int64s(sections[label], count) for label in _NUMBER_COLUMNS)
    if b"/" in sections[b"names"]:  # the names become paths: "/" would leave the maildrop
        raise CorruptCache("a name with a slash")
    names, unique_ids, places = (_texts(sections[label], count) for label in _TEXT_COLUMNS)
    if len(set(names)) != count or "" in names:
        raise CorruptCache("an empty or repeated name")
    unique_ids = _resolve_unique_ids(unique_ids, names, sections[b"uidl"])
    if not valid_places(places):
        raise CorruptCache("a bad place")
    return CacheTable(
        settings=os.fsdecode(fields[2]),
        names=names,
        octets=octets,
        delivered_ns=delivered,
        ranks=ranks,
        unique_ids=unique_ids,
        first_retrieved=_retrieval_times(sections[b"retrieved"], count),
        places=places,
        stamps=DirStamps.parse(fields[4].decode("ascii", "replace")),
    )


def _count(text: bytes) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise CorruptCache(f"bad count {text[:20]!r}")
    return int(text)


_ALL_SECTIONS = (*_NUMBER_COLUMNS, b"retrieved", *_TEXT_COLUMNS)


def _sections(rest: memoryview, count: int) -> dict[bytes, bytes]:
    """The sections in their fixed order, each `label length LF bytes LF`."""
    sections: dict[bytes, bytes] = {}
    position = 0
    for label in _ALL_SECTIONS:
        line_end = bytes(rest[position : position + 64]).find(b"\n")
        if line_end < 0:
            raise CorruptCache(f"expected the {label.decode()} column")
        name, _, length = bytes(rest[position : position + line_end]).partition(b" ")
        if name != label or not length.isdigit():
            raise CorruptCache(f"expected the {label.decode()} column")
        start = position + line_end + 1
        end = start + int(length)
        if bytes(rest[end : end + 1]) != b"\n":
            raise CorruptCache(f"{label.decode()}: cut")
        sections[label] = bytes(rest[start:end])
        position = end + 1
    if position != len(rest):
        raise CorruptCache("trailing data")
    return sections


def _int64s(raw: bytes, count: int) -> list[int]:
    if len(raw) != 8 * count:
        raise CorruptCache(f"{len(raw)} octets of numbers for {count} messages")
    numbers = array("q")
    numbers.frombytes(raw)
    if sys.byteorder == "big":  # pragma: no cover - the file is little-endian
        numbers.byteswap()
    if count and min(numbers) < 0:
        raise CorruptCache("a negative number")
    return numbers.tolist()


def _retrieval_times(raw: bytes, count: int) -> list[float | None]:
    if len(raw) != 8 * count:
        raise CorruptCache(f"{len(raw)} octets of times for {count} messages")
    if raw == _NEVER * count:  # the usual case: nothing retrieved and kept yet
        return [None] * count
    times = array("d")
    times.frombytes(raw)
    if sys.byteorder == "big":  # pragma: no cover
        times.byteswap()
    values = times.tolist()
    # NaN (the only value unequal to itself) marks "never retrieved"; anything else must
    # be a real, non-negative time.
    known = [when for when in values if when == when]  # noqa: PLR0124
    if known and (min(known) < 0 or not math.isfinite(max(known))):
        raise CorruptCache("retrieved: not a time")
    if len(known) == count:
        return list(known)
    return [when if when == when else None for when in values]  # noqa: PLR0124


def _texts(raw: bytes, count: int) -> list[str]:
    if not count:
        if raw:
            raise CorruptCache("text for no messages")
        return []
    items = os.fsdecode(raw).split(_SEPARATOR)
    if len(items) != count:
        raise CorruptCache(f"{len(items)} entries for {count} messages")
    return items


def _resolve_unique_ids(unique_ids: list[str], names: list[str], raw: bytes) -> list[str]:
    """Empty entries stand for the base name; the result must be valid unique-ids."""
    if raw.count(0) == len(raw):  # all empty: each unique-id is the base name
        resolved, check = list(names), os.fsencode(_SEPARATOR.join(names))
    else:
        resolved = [unique_id or name for unique_id, name in zip(unique_ids, names, strict=True)]
        check = os.fsencode(_SEPARATOR.join(resolved)) if "" in unique_ids else raw
    if check.translate(None, _UIDL_ALPHABET):
        raise CorruptCache("an invalid unique-id")
    if resolved and (max(map(len, resolved)) > UIDL_MAX_LENGTH or "" in resolved):
        raise CorruptCache("an invalid unique-id")
    return resolved


def format_cache(table: CacheTable) -> bytes:
    """The file bytes for `table`."""
    count = len(table)
    if len(table.places) != count:
        raise ValueError("the cache needs every message's place")
    unique_ids = [
        "" if unique_id == name else unique_id
        for unique_id, name in zip(table.unique_ids, table.names, strict=True)
    ]
    retrieved = [math.nan if when is None else when for when in table.first_retrieved]
    stamps = "-" if table.stamps is None else table.stamps.format()
    parts = [
        b"%s\t%d\t%s\t%d\t%s\n"
        % (_MAGIC, CACHE_VERSION, os.fsencode(table.settings), count, stamps.encode("ascii"))
    ]
    columns: list[tuple[bytes, bytes]] = [
        (b"octets", _pack("q", table.octets)),
        (b"delivered", _pack("q", table.delivered_ns)),
        (b"rank", _pack("q", table.ranks)),
        (b"retrieved", _pack("d", retrieved)),
        (b"names", os.fsencode(_SEPARATOR.join(table.names))),
        (b"uidl", os.fsencode(_SEPARATOR.join(unique_ids))),
        (b"places", os.fsencode(_SEPARATOR.join(table.places))),
    ]
    for label, raw in columns:
        parts += (b"%s %d\n" % (label, len(raw)), raw, b"\n")
    body = b"".join(parts)
    return body + b"end %08x\n" % zlib.crc32(body)


def _pack(typecode: str, values: list[int] | list[float]) -> bytes:
    packed = array(typecode, values)
    if sys.byteorder == "big":  # pragma: no cover
        packed.byteswap()
    return packed.tobytes()


def write_cache(maildir: str, table: CacheTable) -> None:
    """Replace the cache atomically: a crash leaves the old file or the new one, whole.
    Call with the maildrop lock held. Raises OSError."""
    data = format_cache(table)
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
    fsync_directory(maildir)
