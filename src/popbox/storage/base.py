"""The storage interface every mail store implements (shared/DESIGN.md, storage/).

A MaildropStore opens one user's maildrop, taking the RFC 1939 section 8 exclusive lock
("the POP3 server then acquires an exclusive-access lock on the maildrop"), which must hold
across processes. The Maildrop it returns carries the listing snapshot fixed at open time,
streams messages in blocks, and removes messages only when asked at UPDATE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, overload

# Size of the blocks a store yields from read(); large enough for bulk bytes operations,
# small enough that a 100 MB message never sits in memory whole.
READ_BLOCK_SIZE = 64 * 1024


class MessageInfo(NamedTuple):
    """One message of the listing snapshot.

    key:       the store's own handle for the message (opaque to the protocol core).
    octets:    the size as sent on the wire (RFC 1939 section 11): every line ends with
               CRLF (a stored bare LF counts as two octets), a missing final line end counts
               as the CRLF that will be sent, byte-stuffing dots are not counted.
    unique_id: the UIDL (RFC 1939 section 7): 1-70 octets in 0x21-0x7E, stable forever.
    """

    key: str
    octets: int
    unique_id: str
    # (A NamedTuple rather than a frozen dataclass: equally immutable, and a listing of
    # 100,000 of them is built three times faster.)
    # When a client first retrieved it (Unix time), from the maildrop cache; None if never.
    # RFC 2449 section 6.7 EXPIRE counts from here.
    first_retrieved: float | None = None


class MessageTable(Sequence[MessageInfo]):
    """A listing snapshot held by column, as a big maildrop's cache holds it: one list
    per field instead of one MessageInfo per message. Indexing builds a MessageInfo on
    demand; the protocol core reads the columns directly (protocol/events.py
    ListedColumns), so opening 100,000 messages creates no per-message object."""

    __slots__ = ("first_retrieved", "keys", "octet_counts", "unique_ids")

    def __init__(
        self,
        keys: Sequence[str],
        octet_counts: Sequence[int],
        unique_ids: Sequence[str],
        first_retrieved: Sequence[float | None],
    ) -> None:
        if not len(keys) == len(octet_counts) == len(unique_ids) == len(first_retrieved):
            raise ValueError("columns of different lengths")
        self.keys = keys
        self.octet_counts = octet_counts
        self.unique_ids = unique_ids
        self.first_retrieved = first_retrieved

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> MessageInfo: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[MessageInfo]: ...
    def __getitem__(self, index: int | slice) -> MessageInfo | Sequence[MessageInfo]:
        if isinstance(index, slice):
            return MessageTable(
                self.keys[index],
                self.octet_counts[index],
                self.unique_ids[index],
                self.first_retrieved[index],
            )
        return MessageInfo(
            self.keys[index],
            self.octet_counts[index],
            self.unique_ids[index],
            self.first_retrieved[index],
        )

    def __iter__(self) -> Iterator[MessageInfo]:
        return map(MessageInfo, self.keys, self.octet_counts, self.unique_ids, self.first_retrieved)

    def __repr__(self) -> str:
        return f"<MessageTable of {len(self)} messages>"


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """What UPDATE managed to remove. `failed` holds the keys that could not be removed."""

    removed: tuple[str, ...]
    failed: tuple[str, ...]


class StoreError(Exception):
    """The store cannot serve now (I/O error, unreachable database): `-ERR [SYS/TEMP]`."""


class MaildropLocked(StoreError):
    """Another session holds the maildrop's exclusive lock: `-ERR [IN-USE]`."""


class InvalidMaildropUser(StoreError):
    """The user name cannot name a maildrop (empty, "..", a "/" ...); nothing was touched.
    Trying again will not help: `-ERR [SYS/PERM]`."""


class MessageGone(StoreError):
    """The message vanished since the snapshot was taken: `-ERR` for that message."""


class Maildrop(Protocol):
    """An open, locked maildrop. The lock is held until close()."""

    @property
    def listing(self) -> Sequence[MessageInfo]:
        """The snapshot taken at open time, in message-number order (1..n)."""
        ...

    def read(self, key: str) -> AsyncIterator[bytes]:
        """Yield the stored message in blocks of at most READ_BLOCK_SIZE octets.

        Raises MessageGone (before the first block) if the message vanished, StoreError on
        I/O failure. The bytes are as stored (LF or CRLF line ends); the protocol encoder
        turns them into wire form.
        """
        ...

    async def delete(self, keys: Sequence[str]) -> DeleteResult:
        """Remove the messages (UPDATE state only). A message already gone counts as removed."""
        ...

    async def record_retrievals(self, keys: Sequence[str], when: float) -> None:
        """Remember `when` as the first retrieval time of these messages (an existing
        time is kept). Called in UPDATE, before delete(); best effort (EXPIRE only)."""
        ...

    async def message_changed(self, key: str) -> None:
        """What read(key) gave is not the size the listing announced: the message was
        changed under the session by another program, or the size the store had for it
        was wrong. The next open lists it as it is now (the Maildir store counts it and
        keeps that size). Best effort; never raises."""
        ...

    async def close(self) -> None:
        """Release the lock and every resource. Safe to call more than once."""
        ...


class MaildropStore(Protocol):
    """Where maildrops live: maildir, mbox (and postgresql later)."""

    async def open(self, user: str) -> Maildrop:
        """Lock and snapshot `user`'s maildrop. Raises MaildropLocked or StoreError."""
        ...

    async def deliver(self, user: str, message: bytes) -> None:
        """Add one message to `user`'s maildrop atomically: visible whole or not at all,
        never disturbing a POP3 session's snapshot. Raises InvalidMaildropUser for a name
        that cannot have a maildrop, StoreError when the store cannot take it now."""
        ...
