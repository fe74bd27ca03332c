"""The session's listing snapshot (RFC 1939 section 5): message numbers 1..n fixed at login,
deletion marks, and the running totals STAT reports.

Held by column (keys, sizes, unique-ids), so that a maildrop of 100,000 messages costs a
few list references at login and LIST/UIDL are formatted in bulk, without a Python object
or a Python-level step per message."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import compress

from popbox.protocol.errors import RemoteProtocolError
from popbox.protocol.events import Listed, ListedColumns, ListedMessage


class Listing:
    __slots__ = (
        "_deleted",
        "_keys",
        "_octets",
        "_uidl_text",
        "_unique_ids",
        "live_count",
        "live_octets",
    )

    def __init__(self, messages: Sequence[ListedMessage] | ListedColumns = ()) -> None:
        # list and tuple first: isinstance() against the runtime-checkable ListedColumns
        # walks the protocol's members (tens of microseconds), and every connection makes
        # an empty Listing before login; in a burst of connects that adds up.
        if not isinstance(messages, list | tuple) and isinstance(messages, ListedColumns):
            self._keys = messages.keys
            self._octets = messages.octet_counts
            self._unique_ids = messages.unique_ids
        else:
            self._keys = [m.key for m in messages]
            self._octets = [m.octets for m in messages]
            self._unique_ids = [m.unique_id for m in messages]
        if not len(self._keys) == len(self._octets) == len(self._unique_ids):
            raise ValueError("listing columns of different lengths")
        self._deleted = [False] * len(self._keys)
        self.live_count = len(self._keys)
        self.live_octets = sum(self._octets)
        self._uidl_text: str | None = None  # the whole UIDL listing, made at the first UIDL

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, number: int) -> ListedMessage:
        """A message that may be acted on: RFC 1939 section 5, "may NOT refer to a message
        marked as deleted"."""
        if not 1 <= number <= len(self._keys):
            raise RemoteProtocolError(f"no such message, only {len(self._keys)} in maildrop")
        index = number - 1
        if self._deleted[index]:
            raise RemoteProtocolError(f"message {number} already deleted")
        return Listed(self._keys[index], self._octets[index], self._unique_ids[index])

    def mark_deleted(self, number: int) -> None:
        message = self.get(number)
        self._deleted[number - 1] = True
        self.live_count -= 1
        self.live_octets -= message.octets

    def reset(self) -> None:
        """RSET: unmark every message."""
        self._deleted = [False] * len(self._keys)
        self.live_count = len(self._keys)
        self.live_octets = sum(self._octets)

    def list_lines(self) -> bytes:
        """LIST's lines, "n octets" CRLF each, for every message not marked deleted. Bulk
        formatting: a maildrop of 100,000 messages is listed in a few tens of ms."""
        return self._lines("%d %d\r\n", self._octets).encode("ascii")

    def uidl_lines(self) -> bytes:
        """UIDL's lines, "n unique-id" CRLF each, for every message not marked deleted.
        Unique-ids are ASCII (RFC 1939 section 7), so the text is encoded once, whole."""
        if self.live_count == len(self._keys):
            if self._uidl_text is None:  # clients ask once per session, some twice
                self._uidl_text = self._lines("%d %s\r\n", self._unique_ids)
            return self._uidl_text.encode("ascii")
        return self._lines("%d %s\r\n", self._unique_ids).encode("ascii")

    def _lines(self, template: str, values: Sequence[object]) -> str:
        rows: Iterator[tuple[int, object]] = zip(range(1, len(values) + 1), values, strict=True)
        if self.live_count != len(self._keys):
            rows = compress(rows, [not gone for gone in self._deleted])
        # Lines start with a digit, so none needs byte-stuffing (RFC 1939 section 3).
        return "".join(map(template.__mod__, rows))

    def deleted_keys(self) -> tuple[str, ...]:
        return tuple(compress(self._keys, self._deleted))
