"""One behavioural suite for every mail store (Maildir, mbox, PostgreSQL): the contract
of storage/base.py, checked the same way on each backend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from popbox.protocol.encoder import MessageEncoder
from popbox.storage.base import InvalidMaildropUser, Maildrop, MaildropLocked, MaildropStore

Factory = Callable[[Path], MaildropStore]


def maildir_store(root: Path) -> MaildropStore:
    from popbox.storage.maildir import MaildirStore  # noqa: PLC0415

    return MaildirStore(str(root / "%u" / "Maildir"))


def mbox_store(root: Path) -> MaildropStore:
    from popbox.storage.mbox import MboxStore  # noqa: PLC0415

    # mboxrd: the lossless variant (mboxo cannot tell a quoted ">From " from a real one).
    return MboxStore(str(root / "%u.mbox"), mbox_format="mboxrd", lock_timeout=2.0)


def postgresql_store(url: str) -> MaildropStore:
    from popbox.storage.postgresql import PostgresStore  # noqa: PLC0415

    return PostgresStore(url)


BACKENDS = {"maildir": maildir_store, "mbox": mbox_store}
MESSAGES = [
    b"From: a@example.org\r\nSubject: one\r\n\r\nfirst\r\n",
    b"From: b@example.org\nSubject: two\n\nFrom the start of a line\n.dot\n",
    b"From: c@example.org\nSubject: three\n\nno final newline",
]


@pytest.fixture(params=[*sorted(BACKENDS), "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MaildropStore:
    if request.param == "postgresql":
        # A fresh database on the session's PostgreSQL (tests/pg_helpers.py).
        return postgresql_store(request.getfixturevalue("pg_url"))
    return BACKENDS[request.param](tmp_path)


def run(store: MaildropStore, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run `scenario` in a fresh event loop, then close what the store keeps open in it
    (the PostgreSQL store's pool)."""

    async def main() -> None:
        try:
            await scenario()
        finally:
            aclose = getattr(store, "aclose", None)
            if aclose is not None:
                await aclose()

    asyncio.run(main())


async def read_all(maildrop: Maildrop, key: str) -> bytes:
    return b"".join([block async for block in maildrop.read(key)])


def wire(data: bytes) -> bytes:
    encoder = MessageEncoder()
    return encoder.feed(data) + encoder.finish()


async def deliver_all(store: MaildropStore, user: str, messages: list[bytes]) -> None:
    for message in messages:
        await store.deliver(user, message)


def test_missing_maildrop_is_empty(store: MaildropStore) -> None:
    async def scenario() -> None:
        maildrop = await store.open("nobody-yet")
        assert list(maildrop.listing) == []
        await maildrop.close()

    run(store, scenario)


def test_delivered_messages_read_back_with_exact_sizes(store: MaildropStore) -> None:
    async def scenario() -> None:
        await deliver_all(store, "alice", MESSAGES)
        maildrop = await store.open("alice")
        assert len(maildrop.listing) == 3
        for info, original in zip(maildrop.listing, MESSAGES, strict=True):
            stored = await read_all(maildrop, info.key)
            # What the client receives is the message as delivered (stores may keep LF or
            # CRLF line ends, and mbox always ends a message with a line end).
            assert wire(stored) == wire(original)
            # The listed size is exactly what RETR sends (without stuffing and the end).
            sent = wire(stored)[: -len(b".\r\n")]
            assert info.octets == len(sent) - sent.count(b"\r\n..") - sent.startswith(b"..")
        await maildrop.close()

    run(store, scenario)


def test_uidls_stable_across_sessions_and_deletions(store: MaildropStore) -> None:
    async def scenario() -> None:
        await deliver_all(store, "alice", MESSAGES)
        first = await store.open("alice")
        uidls = [m.unique_id for m in first.listing]
        assert len(set(uidls)) == 3
        assert all(1 <= len(u) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in u) for u in uidls)
        result = await first.delete([first.listing[0].key])
        assert result.failed == ()
        await first.close()
        second = await store.open("alice")
        assert [m.unique_id for m in second.listing] == uidls[1:]
        await second.close()

    run(store, scenario)


def test_exclusive_lock_and_release(store: MaildropStore) -> None:
    async def scenario() -> None:
        await deliver_all(store, "alice", MESSAGES[:1])
        holder = await store.open("alice")
        with pytest.raises(MaildropLocked):
            await store.open("alice")
        other = await store.open("bob")  # other maildrops are not affected
        await other.close()
        await holder.close()
        again = await store.open("alice")
        await again.close()

    run(store, scenario)


def test_snapshot_is_fixed_and_delivery_shows_up_next_time(store: MaildropStore) -> None:
    async def scenario() -> None:
        await deliver_all(store, "alice", MESSAGES[:1])
        session = await store.open("alice")
        # Maildir delivery never waits; mbox delivery waits for the session's lock.
        late = asyncio.create_task(store.deliver("alice", MESSAGES[1]))
        await asyncio.sleep(0)
        assert len(session.listing) == 1
        await session.close()
        await asyncio.wait_for(late, 10)
        after = await store.open("alice")
        assert len(after.listing) == 2
        await after.close()

    run(store, scenario)


def test_retrieval_times_persist(store: MaildropStore) -> None:
    async def scenario() -> None:
        await deliver_all(store, "alice", MESSAGES[:2])
        session = await store.open("alice")
        assert [m.first_retrieved for m in session.listing] == [None, None]
        await session.record_retrievals([session.listing[1].key], 1_800_000_000.0)
        await session.close()
        again = await store.open("alice")
        assert [m.first_retrieved for m in again.listing] == [None, 1_800_000_000.0]
        await again.record_retrievals([again.listing[1].key], 1_900_000_000.0)  # kept
        await again.close()
        third = await store.open("alice")
        assert third.listing[1].first_retrieved == 1_800_000_000.0
        await third.close()

    run(store, scenario)


@pytest.mark.parametrize("user", ["", "..", "../etc", "a/b", "x\x00y", ".hidden"])
def test_bad_user_names_touch_nothing(store: MaildropStore, tmp_path: Path, user: str) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidMaildropUser):
            await store.open(user)
        with pytest.raises(InvalidMaildropUser):
            await store.deliver(user, MESSAGES[0])

    before = sorted(tmp_path.rglob("*"))
    run(store, scenario)
    assert sorted(tmp_path.rglob("*")) == before
