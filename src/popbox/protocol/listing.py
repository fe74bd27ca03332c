"""The session's listing snapshot (RFC 1939 section 5): message numbers 1..n fixed at login,
deletion marks, and the running totals STAT reports."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from popbox.protocol.errors import RemoteProtocolError
from popbox.protocol.events import ListedMessage


class Listing:
    __slots__ = ("_deleted", "_messages", "live_count", "live_octets")

    def __init__(self, messages: Sequence[ListedMessage] = ()) -> None:
        self._messages = tuple(messages)
        self._deleted = [False] * len(self._messages)
        self.live_count = len(self._messages)
        self.live_octets = sum(m.octets for m in self._messages)

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

    def live(self) -> Iterator[tuple[int, ListedMessage]]:
        """(number, message) for every message not marked deleted."""
        for number, (message, gone) in enumerate(
            zip(self._messages, self._deleted, strict=True), 1
        ):
            if not gone:
                yield number, message

    def deleted_keys(self) -> tuple[str, ...]:
        return tuple(m.key for m, gone in zip(self._messages, self._deleted, strict=True) if gone)
