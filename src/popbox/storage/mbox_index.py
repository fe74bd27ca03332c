"""The index `<mbox>.popbox-index`: where each record of an mbox lies, its octets on the
wire and its UIDL candidates, so that a login does not parse the whole mbox again.

Without it every login read the whole file (0.35 s for 100 MB, most of it in a worker
thread holding the GIL). Dovecot keeps an index for the same reason. Ours is only a cache:
it is read and written with the mbox's locks held, written whole to a temporary file and
renamed, and anything wrong with it (damaged, another version, another byte order) means
the mbox is parsed again, as before. It never loses mail.

MboxStore.open uses it thus (load_parsed):

- same file (device and inode), same mbox_format, and the size, mtime and ctime it
  recorded, taken when the last change was at least SETTLE_NS old: used as it is. A
  change since would have given the file a later ctime (no program can set the ctime;
  utime(2) sets the mtime and the ctime becomes now). A change within the clock tick of
  the recorded one is what the settling rules out, as for the Maildir cache
  (maildir_listing.DirStamps).
- same file, not shorter (new mail appended; or stamps too fresh to trust): every indexed
  separator line is checked to still be where it was (one small pread each, Dovecot's
  "dirty sync"), a separator must start where the indexed part ends, and only the octets
  after it are parsed.
- anything else (shorter, replaced by another inode as our UPDATE and mutt do, another
  mbox_format, a preamble before the first separator): the whole file is parsed.

What the check cannot see is an edit in place that keeps every separator where it was (a
header field rewritten to the same length). RETR still never sends another size than it
listed (server/retrieval.py): that failure drops the index (drop_index) and the next open
parses everything. After our own UPDATE the index of the rewritten file is computed from
the old one (after_rewrite), so a session that deletes does not cost the next a parse.

File format, version 1: a text line "popbox-mbox-index 1 <byte order>", a text line of
the stamp, mbox_format and record count, then the records by column, so that loading is
a few bulk operations (mbox_records.RecordColumns): seven int64 columns in the machine's
byte order (separator, record_end, start, end, octets, fingerprint, folder data), the
32-digit header digests, and one line per record holding its X-UIDL value or nothing.
"""

from __future__ import annotations

import logging
import operator
import os
import re
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from popbox.storage.mbox_cache import read_beside, replace_beside
from popbox.storage.mbox_format import MboxFormat, is_separator_at
from popbox.storage.mbox_records import (
    FINGERPRINT_SIZE,
    Parsed,
    Record,
    RecordColumns,
    fingerprint,
)
from popbox.storage.mbox_scan import parse, parse_appended
from popbox.storage.mbox_uidl import DIGEST_LENGTH

__all__ = ["INDEX_SUFFIX", "FileStamp", "after_rewrite", "drop_index", "load_parsed"]

logger = logging.getLogger(__name__)

INDEX_SUFFIX: Final = ".popbox-index"
_MAGIC: Final = b"popbox-mbox-index 1 " + sys.byteorder.encode("ascii") + b"\n"
_FIELDS: Final = 7  # int64 per record
_STAMP = re.compile(rb"(\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (mboxo|mboxrd) (\d+)\n")
_X_UIDL = re.compile(rb"[\x21-\x7e]{1,70}")
_DIGEST = re.compile(rb"[0-9a-f]*")
# Octets read at once when checking records (_in_place): a few small messages' worth.
VERIFY_BLOCK: Final = 64 * 1024
# Refuse to load an index larger than this (some ten million messages): it is not ours.
_MAX_INDEX_SIZE: Final = 1024 * 1024 * 1024
# An index for an mbox of S octets is at most this big: S // 7 records (a record is at
# least "From \n\n"), each 56 octets of numbers, a 32-digit digest and an X-UIDL line of
# at most 71, after a header line. A larger file is not ours, and is not read whole.
_HEAD_ROOM: Final = 4096
_PER_RECORD: Final = 7 * 8 + 32 + 71


@dataclass(frozen=True, slots=True)
class FileStamp:
    """The mbox as fstat(2) saw it, and when (time.time_ns())."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    taken_ns: int

    SETTLE_NS: ClassVar[int] = 2_000_000_000

    @classmethod
    def of(cls, fd: int) -> FileStamp:
        """Raises OSError."""
        taken = time.time_ns()
        status = os.fstat(fd)
        return cls(
            status.st_dev,
            status.st_ino,
            status.st_size,
            status.st_mtime_ns,
            status.st_ctime_ns,
            taken,
        )

    @property
    def settled(self) -> bool:
        return max(self.mtime_ns, self.ctime_ns) < self.taken_ns - self.SETTLE_NS

    def same_file(self, other: FileStamp) -> bool:
        return (self.dev, self.ino) == (other.dev, other.ino)

    def unchanged(self, now: FileStamp) -> bool:
        """Whether this (recorded, settled) stamp still describes the file stamped `now`."""
        fields = (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)
        return self.settled and fields == (now.dev, now.ino, now.size, now.mtime_ns, now.ctime_ns)


@dataclass(frozen=True, slots=True)
class _Index:
    stamp: FileStamp
    mbox_format: MboxFormat
    parsed: Parsed


def load_parsed(fd: int, path: str, stamp: FileStamp, mbox_format: MboxFormat) -> Parsed:
    """The records of the locked mbox open at `fd` (of `stamp.size` octets), from its index
    as far as it can be trusted, by parsing otherwise; the index is written again when it
    changed. Raises StoreError (from parsing); a bad or unwritable index is logged."""
    index = _read_index(path, _HEAD_ROOM + (stamp.size // 7 + 1) * _PER_RECORD)
    parsed = _from_index(fd, stamp, mbox_format, index) if index is not None else None
    if index is not None and parsed is index.parsed:
        if index.stamp.unchanged(stamp):
            return parsed  # trusted as it was
        if index.stamp.size == stamp.size and not stamp.settled:
            return parsed  # checked; a new stamp would be no more trusted than the old
    if parsed is None:
        parsed = parse(fd, stamp.size, mbox_format)
    if parsed.preamble:
        drop_index(path)  # not an mbox as we index them: parsed at every open
    else:
        _write_index(path, _Index(stamp, mbox_format, parsed))
    return parsed


def _from_index(fd: int, stamp: FileStamp, mbox_format: MboxFormat, index: _Index) -> Parsed | None:
    """The records from `index` (and the octets appended since), or None: parse it all."""
    known = index.parsed
    if index.mbox_format != mbox_format or not index.stamp.same_file(stamp):
        return None
    if stamp.size < known.size or known.preamble:
        return None
    if index.stamp.unchanged(stamp):
        return known
    if not _in_place(fd, known.records):
        return None
    if stamp.size == known.size:
        return known
    if not is_separator_at(fd, known.size):
        return None
    return parse_appended(fd, stamp.size, mbox_format, known)


def _in_place(fd: int, records: Sequence[Record]) -> bool:
    """Whether every record still starts, after an empty line, with the octets it was
    indexed with (their fingerprint). The file is read in blocks of VERIFY_BLOCK, so that
    small messages share a read."""
    columns = RecordColumns.of(records)
    block, block_start = b"", 0
    try:
        for separator, end, mark in zip(
            columns.separators, columns.ends, columns.fingerprints, strict=True
        ):
            start = separator - 2 if separator >= 2 else 0
            stop = separator + min(FINGERPRINT_SIZE, end - separator)
            if stop - block_start > len(block) or start < block_start:
                block, block_start = os.pread(fd, max(VERIFY_BLOCK, stop - start), start), start
                if stop - block_start > len(block):
                    return False  # the file is shorter now
            if separator >= 2 and block[start - block_start : separator - block_start] != b"\n\n":
                return False
            if fingerprint(block[separator - block_start : stop - block_start]) != mark:
                return False
    except OSError:
        return False
    return True


def after_rewrite(
    fd: int, path: str, mbox_format: MboxFormat, parsed: Parsed, removed: list[tuple[int, int]]
) -> None:
    """Index the mbox our UPDATE just rewrote (open at `fd`) without the records whose
    [separator, record_end) ranges are `removed` (storage/mbox_rewrite.py keeps every other
    octet, in order). Best effort: a failure leaves the next open to parse."""
    if parsed.preamble:
        return
    gone = set(removed)
    records: list[Record] = []
    shift = 0
    for record in parsed.records:
        if (record.separator, record.record_end) in gone:
            shift += record.record_end - record.separator
            continue
        records.append(
            record._replace(
                separator=record.separator - shift,
                record_end=record.record_end - shift,
                start=record.start - shift,
                end=record.end - shift,
            )
        )
    try:
        stamp = FileStamp.of(fd)
    except OSError as exc:
        logger.warning("cannot stat mbox %r after UPDATE: %s", path, exc)
        drop_index(path)
        return
    kept = Parsed(parsed.size - shift, tuple(records))
    _write_index(path, _Index(stamp, mbox_format, kept))


def drop_index(path: str) -> None:
    """Remove the index of the mbox at `path` (the next open parses it all)."""
    try:
        os.unlink(path + INDEX_SUFFIX)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("cannot remove mbox index %r: %s", path + INDEX_SUFFIX, exc)


# -- the file ---------------------------------------------------------------------------


def _encode(index: _Index) -> bytes:
    stamp, parsed = index.stamp, index.parsed
    columns = RecordColumns.of(parsed.records)
    numbers = array("q")
    for column in _numeric(columns):
        numbers.extend(column)
    x_uidls = "".join(f"{x_uidl or ''}\n" for x_uidl in columns.x_uidls)
    head = (
        f"{stamp.dev} {stamp.ino} {stamp.size} {stamp.mtime_ns} {stamp.ctime_ns} "
        f"{stamp.taken_ns} {index.mbox_format} {len(columns)}\n"
    )
    return b"".join(
        [
            _MAGIC,
            head.encode("ascii"),
            numbers.tobytes(),
            "".join(columns.digests).encode("ascii"),
            x_uidls.encode("ascii"),
        ]
    )


def _numeric(columns: RecordColumns) -> tuple[Sequence[int], ...]:
    """The integer columns, in the file's order."""
    return (
        columns.separators,
        columns.record_ends,
        columns.starts,
        columns.ends,
        columns.octets,
        columns.fingerprints,
        columns.folder_data,
    )


def _decode(data: bytes) -> _Index | None:
    """The index in `data`, or None if it is not one we wrote (or is inconsistent)."""
    if not data.startswith(_MAGIC):
        return None
    head_end = data.find(b"\n", len(_MAGIC)) + 1
    match = _STAMP.fullmatch(data, len(_MAGIC), head_end)
    if match is None:
        return None
    dev, ino, size, mtime, ctime, taken = (int(match.group(n)) for n in range(1, 7))
    mbox_format: MboxFormat = "mboxrd" if match.group(7) == b"mboxrd" else "mboxo"
    count = int(match.group(8))
    numbers_end = head_end + count * _FIELDS * 8
    digests_end = numbers_end + count * DIGEST_LENGTH
    numbers = array("q")
    numbers.frombytes(data[head_end:numbers_end])
    digests = data[numbers_end:digests_end]
    x_uidls = data[digests_end:].split(b"\n")
    if len(numbers) != count * _FIELDS or len(digests) != count * DIGEST_LENGTH:
        return None
    if len(x_uidls) != count + 1 or x_uidls.pop() or not _DIGEST.fullmatch(digests):
        return None
    if any(x_uidl and not _X_UIDL.fullmatch(x_uidl) for x_uidl in x_uidls):
        return None
    separators, record_ends, starts, ends, octets, marks, folder_data = (
        numbers[n * count : (n + 1) * count] for n in range(_FIELDS)
    )
    # Records follow each other from offset 0 to the end, each message within its own.
    if count and (separators[0] != 0 or separators[1:] != record_ends[:-1]):
        return None
    if (record_ends[-1] if count else 0) != size or (count and min(octets) < 0):
        return None
    if not all(map(operator.lt, separators, record_ends)):
        return None
    if not all(map(operator.le, separators, starts)) or not all(map(operator.le, starts, ends)):
        return None
    if not all(map(operator.le, ends, record_ends)) or not set(folder_data) <= {0, 1}:
        return None
    text = digests.decode("ascii")
    columns = RecordColumns(
        separators,
        record_ends,
        starts,
        ends,
        octets,
        [x_uidl.decode("ascii") if x_uidl else None for x_uidl in x_uidls],
        [text[n : n + DIGEST_LENGTH] for n in range(0, len(text), DIGEST_LENGTH)],
        marks,
        folder_data,
    )
    stamp = FileStamp(dev, ino, size, mtime, ctime, taken)
    return _Index(stamp, mbox_format, Parsed(size, columns))


def _read_index(path: str, limit: int = _MAX_INDEX_SIZE) -> _Index | None:
    """The index of the mbox at `path`, if it is one we wrote and at most `limit` octets."""
    limit = min(limit, _MAX_INDEX_SIZE)
    index_path = path + INDEX_SUFFIX
    data = read_beside(index_path, limit, "mbox index")
    if data is None:
        return None
    index = _decode(data) if len(data) <= limit else None
    if index is None:
        logger.warning("ignoring mbox index %r: not in our format; parsing the mbox", index_path)
    return index


def _write_index(path: str, index: _Index) -> None:
    """Replace the index. Not fsynced: it is a cache, and a lost one only costs a parse."""
    try:
        replace_beside(path, path + INDEX_SUFFIX, _encode(index), durable=False)
    except OSError as exc:
        logger.warning("cannot write mbox index %r: %s", path + INDEX_SUFFIX, exc)
