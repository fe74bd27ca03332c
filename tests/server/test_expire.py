"""RFC 2449 section 6.7 EXPIRE: which messages UPDATE removes besides the DELE'd ones."""

from __future__ import annotations

from popbox.server.update import expired_keys
from popbox.storage.base import MessageInfo

DAY = 86400.0
NOW = 1_800_000_000.0
LISTING = [
    MessageInfo("never", 10, "u1"),
    MessageInfo("today", 10, "u2"),
    MessageInfo("old", 10, "u3", first_retrieved=NOW - 10 * DAY),
    MessageInfo("recent", 10, "u4", first_retrieved=NOW - 2 * DAY),
]


def test_no_expire_policy_removes_nothing() -> None:
    assert expired_keys(LISTING, {"today"}, None, NOW) == set()


def test_expire_zero_removes_every_retrieved_message() -> None:
    assert expired_keys(LISTING, {"today"}, 0, NOW) == {"today", "old", "recent"}


def test_expire_days_counts_from_the_first_retrieval() -> None:
    assert expired_keys(LISTING, {"today", "old"}, 5, NOW) == {"old"}
    assert expired_keys(LISTING, set(), 2, NOW) == {"old", "recent"}
    assert expired_keys(LISTING, set(), 30, NOW) == set()
