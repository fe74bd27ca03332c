"""The listing snapshot of an mbox: where each message lies, its size and its UIDL.

Two bulk passes over the file: find_separators() finds every record, then each record is
read once in large blocks to find the end of its separator line, capture its header block
(for the UIDL) and count its octets as sent on the wire (after mboxrd unquoting: the size
must describe exactly the bytes that read() will stream).

Everything here is blocking file work: call it from a worker thread.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Final, NamedTuple

from popbox.storage.base import MessageInfo
from popbox.storage.mbox_format import (
    SCAN_BLOCK_SIZE,
    MboxFormat,
    Unquoter,
    find_separators,
    pread_exact,
)
from popbox.storage.mbox_uidl import (
    HEADER_LIMIT,
    UidlCandidate,
    assign_unique_ids,
    header_end,
    is_pseudo_message,
    uidl_candidate,
)
from popbox.storage.octets import WireOctetCounter

__all__ = [
    "MboxEntry",
    "MboxSnapshot",
    "Parsed",
    "Record",
    "parse",
    "parse_appended",
    "take_snapshot",
]

logger = logging.getLogger(__name__)

# Octets at the start of each record that the index (storage/mbox_index.py) compares, as a
# fingerprint, to tell whether a record is still the one it indexed.
FINGERPRINT_SIZE: Final = 512


class MboxEntry(NamedTuple):
    """One listed message and where it lies in the file.

    record: [separator, record_end), the whole record: separator line, message, and the
            empty line after it. Deleting the message removes exactly this range.
    content: [start, end), the message itself (still quoted, for mboxrd).
    """

    info: MessageInfo
    separator: int
    record_end: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class MboxSnapshot:
    """The listing fixed at open time. `size` is the file size then: anything found beyond
    it later was appended since, and is kept as it is at UPDATE."""

    size: int
    entries: tuple[MboxEntry, ...]

    @property
    def listing(self) -> tuple[MessageInfo, ...]:
        return tuple(entry.info for entry in self.entries)


class Record(NamedTuple):
    """One record as parsed (and as storage/mbox_index.py keeps it): where it lies (see
    MboxEntry), its octets on the wire and what it offers as its UIDL. (NamedTuples, like
    MessageInfo: an index of 100,000 records is loaded at a login.)"""

    separator: int
    record_end: int
    start: int
    end: int
    octets: int
    candidate: UidlCandidate
    fingerprint: int  # of its first octets: fingerprint()
    folder_data: bool  # an X-IMAP field: UW IMAP's folder data, if it is the first record


def fingerprint(head: bytes) -> int:
    """A record's first FINGERPRINT_SIZE octets (separator line and the top of the header:
    the delivery's time, Received fields, ids), as a signed 64-bit number."""
    digest = hashlib.blake2b(head[:FINGERPRINT_SIZE], digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass(frozen=True, slots=True)
class Parsed:
    """The records of the first `size` octets of an mbox, in file order. `preamble`:
    octets before the first separator (not mail: never listed, kept by every rewrite)."""

    size: int
    records: tuple[Record, ...]
    preamble: int = 0

    @property
    def pseudo(self) -> bool:
        """The first record is UW IMAP's folder data: kept in the file, never listed."""
        return bool(self.records) and self.records[0].folder_data

    def snapshot(self, retrievals: dict[str, float] | None = None) -> MboxSnapshot:
        """The listing; `retrievals` maps UIDLs to first retrieval times (storage/
        mbox_cache.py)."""
        listed = self.records[1:] if self.pseudo else self.records
        unique_ids = assign_unique_ids([record.candidate for record in listed])
        times = retrievals or {}
        entries = []
        for record, unique_id in zip(listed, unique_ids, strict=True):
            info = MessageInfo(
                key=unique_id,
                octets=record.octets,
                unique_id=unique_id,
                first_retrieved=times.get(unique_id),
            )
            entries.append(
                MboxEntry(info, record.separator, record.record_end, record.start, record.end)
            )
        return MboxSnapshot(size=self.size, entries=tuple(entries))


def take_snapshot(
    fd: int, size: int, mbox_format: MboxFormat, retrievals: dict[str, float] | None = None
) -> MboxSnapshot:
    """Parse the first `size` octets of the mbox open at `fd`. Raises StoreError.

    `retrievals` maps UIDLs to first retrieval times (the sidecar cache).
    """
    return parse(fd, size, mbox_format).snapshot(retrievals)


def parse(fd: int, size: int, mbox_format: MboxFormat) -> Parsed:
    """Every record of the first `size` octets of the mbox open at `fd`. Raises StoreError."""
    separators = find_separators(fd, size)
    preamble = 0
    if separators[:1] != [0] and size:
        # Not mail (or not an mbox at all): never listed, kept by every rewrite.
        preamble = separators[0] if separators else size
        logger.warning("mbox does not start with a 'From ' line: %d octets not listed", preamble)
    records = _measure_all(fd, size, separators, mbox_format)
    return Parsed(size, tuple(records), preamble)


def parse_appended(fd: int, size: int, mbox_format: MboxFormat, known: Parsed) -> Parsed:
    """`known` (the first known.size octets, unchanged, and a separator at known.size:
    the caller checked) and the records appended after it, up to `size`."""
    separators = find_separators(fd, size, start=known.size)
    if separators[:1] != [known.size]:
        raise ValueError("parse_appended: no separator where the known records end")
    records = _measure_all(fd, size, separators, mbox_format)
    return Parsed(size, known.records + tuple(records), known.preamble)


def _measure_all(
    fd: int, size: int, separators: list[int], mbox_format: MboxFormat
) -> list[Record]:
    """Each record from its separator to the next (the last one to `size`)."""
    ends_blank = size >= 2 and pread_exact(fd, 2, size - 2) == b"\n\n"
    records: list[Record] = []
    for index, separator in enumerate(separators):
        if index + 1 < len(separators):
            record_end = separators[index + 1]
            end = record_end - 1  # the empty line before the next separator
        else:
            record_end = size
            end = size - 1 if ends_blank else size
        records.append(_measure(fd, separator, record_end, end, mbox_format))
    return records


def _measure(fd: int, separator: int, record_end: int, end: int, fmt: MboxFormat) -> Record:
    """Read one record once: skip the separator line, capture the header, count octets."""
    counter = WireOctetCounter()
    unquoter = Unquoter() if fmt == "mboxrd" else None
    head = bytearray()
    header: bytes | None = None
    start = -1
    offset = separator
    first = b""
    while offset < end:
        block = pread_exact(fd, min(SCAN_BLOCK_SIZE, end - offset), offset)
        block_offset, offset = offset, offset + len(block)
        if block_offset == separator:
            first = block[:FINGERPRINT_SIZE]
        if start < 0:
            line_end = block.find(b"\n")
            if line_end < 0:
                continue  # still inside the separator line
            start = block_offset + line_end + 1
            block = block[line_end + 1 :]
        if header is None:
            header = _capture_header(head, block)
        counter.feed(unquoter.feed(block) if unquoter else block)
    if unquoter:
        counter.feed(unquoter.flush())
    if start < 0:
        start = max(end, separator)  # a separator line without a line end: no message
    if header is None:
        header = bytes(head[:HEADER_LIMIT])  # no empty line: the whole (short) message
    candidate = uidl_candidate(header)
    return Record(
        separator,
        record_end,
        start,
        max(start, end),
        counter.octets,
        candidate,
        fingerprint(first),
        is_pseudo_message(header),
    )


def _capture_header(head: bytearray, block: bytes) -> bytes | None:
    """Add `block` to the header being captured; the header block once it is complete."""
    searched = len(head)
    head += block[: HEADER_LIMIT + 2 - searched]
    found = header_end(bytes(head), searched)
    if found >= 0:
        return bytes(head[:found])
    if len(head) >= HEADER_LIMIT:
        return bytes(head[:HEADER_LIMIT])
    return None
