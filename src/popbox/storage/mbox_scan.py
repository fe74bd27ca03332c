"""Parsing an mbox: where each message lies, its size and its UIDL (storage/mbox_records.py).

Two bulk passes over the file: find_separators() finds every record, then each record is
read once in large blocks to find the end of its separator line, capture its header block
(for the UIDL) and count its octets as sent on the wire (after mboxrd unquoting: the size
must describe exactly the bytes that read() will stream).

Everything here is blocking file work: call it from a worker thread.
"""

from __future__ import annotations

import logging

from popbox.storage.mbox_format import (
    SCAN_BLOCK_SIZE,
    MboxFormat,
    Unquoter,
    find_separators,
    pread_exact,
)
from popbox.storage.mbox_records import (
    FINGERPRINT_SIZE,
    Parsed,
    Record,
    RecordColumns,
    fingerprint,
)
from popbox.storage.mbox_uidl import HEADER_LIMIT, header_end, is_pseudo_message, uidl_candidate
from popbox.storage.octets import WireOctetCounter

__all__ = ["parse", "parse_appended"]

logger = logging.getLogger(__name__)


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
    return Parsed(size, RecordColumns.of(known.records).extended(records), known.preamble)


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
