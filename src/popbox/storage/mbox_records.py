"""An mbox's records as parsed (storage/mbox_scan.py) or indexed (storage/mbox_index.py),
and the listing snapshot a session gets from them.

A parse yields one Record per message. The index is loaded by column instead (one array
per field, RecordColumns): at a login that trusts it, no per-message object is made. The
listing is a base.MessageTable over those columns, and a message's place in the file
(MboxEntry) is built when the session reads or deletes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, overload

from popbox.storage.base import MessageInfo, MessageTable
from popbox.storage.mbox_uidl import UidlCandidate, assign_unique_ids

__all__ = [
    "FINGERPRINT_SIZE",
    "MboxEntry",
    "MboxSnapshot",
    "Parsed",
    "Record",
    "RecordColumns",
    "fingerprint",
]

# Octets at the start of each record that the index compares, as a fingerprint, to tell
# whether a record is still the one it indexed.
FINGERPRINT_SIZE: Final = 512


def fingerprint(head: bytes) -> int:
    """A record's first FINGERPRINT_SIZE octets (separator line and the top of the header:
    the delivery's time, Received fields, ids), as a signed 64-bit number."""
    digest = hashlib.blake2b(head[:FINGERPRINT_SIZE], digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class Record(NamedTuple):
    """One record: where it lies (see MboxEntry), its octets on the wire, what it offers
    as its UIDL."""

    separator: int
    record_end: int
    start: int
    end: int
    octets: int
    candidate: UidlCandidate
    fingerprint: int  # of its first octets: fingerprint()
    folder_data: bool  # an X-IMAP field: UW IMAP's folder data, if it is the first record


class RecordColumns(Sequence[Record]):
    """Records held by field, as the index stores them; a Record is built on demand."""

    __slots__ = (
        "digests",
        "ends",
        "fingerprints",
        "folder_data",
        "octets",
        "record_ends",
        "separators",
        "starts",
        "x_uidls",
    )

    def __init__(  # noqa: PLR0917 - one argument per column
        self,
        separators: Sequence[int],
        record_ends: Sequence[int],
        starts: Sequence[int],
        ends: Sequence[int],
        octets: Sequence[int],
        x_uidls: Sequence[str | None],
        digests: Sequence[str],
        fingerprints: Sequence[int],
        folder_data: Sequence[int],
    ) -> None:
        columns = (starts, ends, octets, x_uidls, digests, fingerprints, folder_data)
        if any(len(column) != len(separators) for column in (record_ends, *columns)):
            raise ValueError("columns of different lengths")
        self.separators, self.record_ends, self.starts, self.ends = (
            separators,
            record_ends,
            starts,
            ends,
        )
        self.octets, self.x_uidls, self.digests = octets, x_uidls, digests
        self.fingerprints, self.folder_data = fingerprints, folder_data

    @classmethod
    def of(cls, records: Sequence[Record]) -> RecordColumns:
        if isinstance(records, RecordColumns):
            return records
        if not records:
            return cls([], [], [], [], [], [], [], [], [])
        separators, record_ends, starts, ends, octets, candidates, marks, folder = zip(
            *records, strict=True
        )
        x_uidls, digests = zip(*candidates, strict=True)
        return cls(separators, record_ends, starts, ends, octets, x_uidls, digests, marks, folder)

    def extended(self, records: Sequence[Record]) -> RecordColumns:
        """These records, then `records`, by column (no Record is built for these)."""
        more = RecordColumns.of(records)
        return RecordColumns(
            [*self.separators, *more.separators],
            [*self.record_ends, *more.record_ends],
            [*self.starts, *more.starts],
            [*self.ends, *more.ends],
            [*self.octets, *more.octets],
            [*self.x_uidls, *more.x_uidls],
            [*self.digests, *more.digests],
            [*self.fingerprints, *more.fingerprints],
            [*self.folder_data, *more.folder_data],
        )

    def __len__(self) -> int:
        return len(self.separators)

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Record]: ...
    def __getitem__(self, index: int | slice) -> Record | Sequence[Record]:
        if isinstance(index, slice):
            return tuple(self)[index]
        return Record(
            self.separators[index],
            self.record_ends[index],
            self.starts[index],
            self.ends[index],
            self.octets[index],
            UidlCandidate(self.x_uidls[index], self.digests[index]),
            self.fingerprints[index],
            bool(self.folder_data[index]),
        )

    def __iter__(self) -> Iterator[Record]:
        candidates = map(UidlCandidate, self.x_uidls, self.digests)
        return map(
            Record,
            self.separators,
            self.record_ends,
            self.starts,
            self.ends,
            self.octets,
            candidates,
            self.fingerprints,
            map(bool, self.folder_data),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return tuple(self) == tuple(other)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Parsed:
    """The records of the first `size` octets of an mbox, in file order. `preamble`:
    octets before the first separator (not mail: never listed, kept by every rewrite)."""

    size: int
    records: Sequence[Record]
    preamble: int = 0

    @property
    def pseudo(self) -> bool:
        """The first record is UW IMAP's folder data: kept in the file, never listed."""
        return len(self.records) > 0 and self.records[0].folder_data

    def snapshot(self, retrievals: dict[str, float] | None = None) -> MboxSnapshot:
        """The listing; `retrievals` maps UIDLs to first retrieval times (storage/
        mbox_cache.py)."""
        columns = RecordColumns.of(self.records)
        first = 1 if self.pseudo else 0
        candidates = list(map(UidlCandidate, columns.x_uidls[first:], columns.digests[first:]))
        unique_ids = assign_unique_ids(candidates)
        if retrievals:
            times: list[float | None] = [retrievals.get(uid) for uid in unique_ids]
        else:
            times = [None] * len(unique_ids)
        listing = MessageTable(unique_ids, columns.octets[first:], unique_ids, times)
        return MboxSnapshot(self.size, listing, columns, first)


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
    it later was appended since, and is kept as it is at UPDATE. Listed message n (from
    0) is record n + `first` of `columns`."""

    size: int
    listing: MessageTable
    columns: RecordColumns
    first: int

    def entry(self, number: int) -> MboxEntry:
        """Listed message `number` (from 0)."""
        at = number + self.first
        columns = self.columns
        return MboxEntry(
            self.listing[number],
            columns.separators[at],
            columns.record_ends[at],
            columns.starts[at],
            columns.ends[at],
        )
