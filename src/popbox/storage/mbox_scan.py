"""The listing snapshot of an mbox: where each message lies, its size and its UIDL.

Two bulk passes over the file: find_separators() finds every record, then each record is
read once in large blocks to find the end of its separator line, capture its header block
(for the UIDL) and count its octets as sent on the wire (after mboxrd unquoting: the size
must describe exactly the bytes that read() will stream).

Everything here is blocking file work: call it from a worker thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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

__all__ = ["MboxEntry", "MboxSnapshot", "take_snapshot"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MboxEntry:
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


@dataclass(frozen=True, slots=True)
class _Measured:
    separator: int
    record_end: int
    start: int
    end: int
    octets: int
    header: bytes


def take_snapshot(
    fd: int, size: int, mbox_format: MboxFormat, retrievals: dict[str, float] | None = None
) -> MboxSnapshot:
    """Parse the first `size` octets of the mbox open at `fd`. Raises StoreError.

    `retrievals` maps UIDLs to first retrieval times (the sidecar cache).
    """
    separators = find_separators(fd, size)
    if separators[:1] != [0] and size:
        # Not mail (or not an mbox at all): never listed, kept by every rewrite.
        preamble = separators[0] if separators else size
        logger.warning("mbox does not start with a 'From ' line: %d octets not listed", preamble)
    ends_blank = size >= 2 and pread_exact(fd, 2, size - 2) == b"\n\n"
    measured: list[_Measured] = []
    for index, separator in enumerate(separators):
        if index + 1 < len(separators):
            record_end = separators[index + 1]
            end = record_end - 1  # the empty line before the next separator
        else:
            record_end = size
            end = size - 1 if ends_blank else size
        measured.append(_measure(fd, separator, record_end, end, mbox_format))
    if measured and is_pseudo_message(measured[0].header):
        del measured[0]  # UW IMAP's folder data: kept in the file, never listed
    candidates = [uidl_candidate(m.header) for m in measured]
    return _snapshot(size, measured, candidates, retrievals or {})


def _snapshot(
    size: int,
    measured: list[_Measured],
    candidates: list[UidlCandidate],
    retrievals: dict[str, float],
) -> MboxSnapshot:
    entries = []
    for m, unique_id in zip(measured, assign_unique_ids(candidates), strict=True):
        info = MessageInfo(
            key=unique_id,
            octets=m.octets,
            unique_id=unique_id,
            first_retrieved=retrievals.get(unique_id),
        )
        entries.append(MboxEntry(info, m.separator, m.record_end, m.start, m.end))
    return MboxSnapshot(size=size, entries=tuple(entries))


def _measure(fd: int, separator: int, record_end: int, end: int, fmt: MboxFormat) -> _Measured:
    """Read one record once: skip the separator line, capture the header, count octets."""
    counter = WireOctetCounter()
    unquoter = Unquoter() if fmt == "mboxrd" else None
    head = bytearray()
    header: bytes | None = None
    start = -1
    offset = separator
    while offset < end:
        block = pread_exact(fd, min(SCAN_BLOCK_SIZE, end - offset), offset)
        block_offset, offset = offset, offset + len(block)
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
    return _Measured(separator, record_end, start, max(start, end), counter.octets, header)


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
