"""RFC 2449 section 6.7 EXPIRE: which messages UPDATE removes besides the DELE'd ones."""

from __future__ import annotations

from collections.abc import Sequence

from popbox.storage.base import MessageInfo


def expired_keys(
    listing: Sequence[MessageInfo], retrieved: set[str], days: int | None, now: float
) -> set[str]:
    """RFC 2449 section 6.7 EXPIRE: the messages first retrieved `days` or more days ago
    (with 0: every retrieved message, in this session or before)."""
    if days is None:
        return set()
    expired = set()
    for message in listing:
        first = message.first_retrieved
        if first is None and message.key in retrieved:
            first = now
        if first is not None and (days == 0 or now - first >= days * 86400):
            expired.add(message.key)
    return expired
