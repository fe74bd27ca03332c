"""What the PostgreSQL store adds to the common contract (test_store_behaviour.py): blocks,
UIDLs from a sequence, UPDATE in one transaction, the advisory lock across stores (nodes),
an unreachable database, the backoff, and `popbox import` from Maildir and mbox."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from pg_helpers import PASSWORD, PostgresServer
from popbox.db.database import Backoff
from popbox.storage.base import (
    READ_BLOCK_SIZE,
    DeleteResult,
    MaildropLocked,
    MessageGone,
    StoreError,
)
from popbox.storage.maildir import MaildirStore
from popbox.storage.mbox import MboxStore
from popbox.storage.octets import wire_octets
from popbox.storage.postgresql import PostgresMaildrop, PostgresStore
from popbox.storage.postgresql_import import ImportSourceError, import_messages, open_source
from server_helpers import write_maildir

_T = TypeVar("_T")
BIG = b"".join(b"%07d line of a big message\n" % n for n in range(12_000))  # ~380 KiB
SMALL = b"Subject: small\n\nbody\n"


def run(url: str, scenario: Callable[[PostgresStore], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        store = PostgresStore(url)
        try:
            return await scenario(store)
        finally:
            await store.aclose()

    return asyncio.run(main())


async def read_all(maildrop: PostgresMaildrop, key: str) -> list[bytes]:
    return [block async for block in maildrop.read(key)]


def test_big_message_in_blocks(pg_server: PostgresServer, pg_url: str, pg_database: str) -> None:
    async def scenario(store: PostgresStore) -> list[bytes]:
        await store.deliver("alice", BIG)
        maildrop = await store.open("alice")
        try:
            assert [info.octets for info in maildrop.listing] == [wire_octets(BIG)]
            return await read_all(maildrop, maildrop.listing[0].key)
        finally:
            await maildrop.close()

    blocks = run(pg_url, scenario)
    assert b"".join(blocks) == BIG
    assert [len(block) for block in blocks[:-1]] == [READ_BLOCK_SIZE] * (len(blocks) - 1)
    rows = pg_server.sql(
        "SELECT seq, length(data) AS size FROM message_blocks ORDER BY seq", database=pg_database
    )
    assert [(row["seq"], row["size"]) for row in rows] == [
        (seq, len(block)) for seq, block in enumerate(blocks)
    ]
    sizes = pg_server.sql("SELECT octets, stored_octets FROM messages", database=pg_database)
    assert tuple(sizes[0]) == (len(BIG) + BIG.count(b"\n"), len(BIG))


def test_uidls_come_from_a_sequence_and_never_return(pg_url: str) -> None:
    async def scenario(store: PostgresStore) -> tuple[list[str], list[str]]:
        for _ in range(3):
            await store.deliver("alice", SMALL)
        first = await store.open("alice")
        before = [info.unique_id for info in first.listing]
        await first.delete([first.listing[2].key])  # the newest: its number is the highest
        await first.close()
        await store.deliver("alice", SMALL)
        second = await store.open("alice")
        after = [info.unique_id for info in second.listing]
        await second.close()
        return before, after

    before, after = run(pg_url, scenario)
    assert all(re.fullmatch(r"pg[0-9a-f]{12}", uidl) for uidl in before + after)
    assert after[:2] == before[:2]
    assert after[2] not in before


def test_update_is_one_transaction(pg_server: PostgresServer, pg_url: str, db: str) -> None:
    """A failure while deleting the second message keeps the first too: all or nothing."""
    pg_server.script(
        """CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF OLD.stored_octets = 5 THEN RAISE 'refused'; END IF; RETURN OLD; END $$;
        CREATE TRIGGER refuse BEFORE DELETE ON messages FOR EACH ROW EXECUTE FUNCTION refuse();
        """,
        database=db,
    )

    async def scenario(store: PostgresStore) -> tuple[DeleteResult, int]:
        await store.deliver("alice", SMALL)
        await store.deliver("alice", b"12345")
        maildrop = await store.open("alice")
        keys = [info.key for info in maildrop.listing]
        result = await maildrop.delete(keys)
        await maildrop.close()
        again = await store.open("alice")
        left = len(again.listing)
        await again.close()
        return result, left

    result, left = run(pg_url, scenario)
    assert result.removed == ()
    assert len(result.failed) == 2
    assert left == 2
    assert pg_server.sql("SELECT count(*) FROM message_blocks", database=db)[0][0] == 2


@pytest.fixture
def db(pg_database: str) -> str:
    return pg_database


def test_lock_holds_across_stores_and_dies_with_the_connection(
    pg_server: PostgresServer, pg_url: str
) -> None:
    """Two PostgresStore objects are two nodes; killing the holder's backend (as when its
    node dies) releases the lock."""

    async def scenario(node_a: PostgresStore) -> None:
        node_b = PostgresStore(pg_url)
        try:
            holder = await node_a.open("alice")
            with pytest.raises(MaildropLocked):
                await node_b.open("alice")
            # The backend holding popbox's advisory lock ("POP3", maildrops.id) goes.
            kill = (
                "SELECT pg_terminate_backend(pid) FROM pg_locks "
                "WHERE locktype = 'advisory' AND classid = 1347375155"
            )
            assert await asyncio.to_thread(pg_server.sql, kill) == [(True,)]
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                try:
                    taken = await node_b.open("alice")
                    break
                except MaildropLocked:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.05)
            await taken.close()
            await holder.close()  # its connection is gone: closing is still fine
        finally:
            await node_b.aclose()

    run(pg_url, scenario)


def test_message_gone_and_retrieval_times(pg_server: PostgresServer, pg_url: str, db: str) -> None:
    async def scenario(store: PostgresStore) -> None:
        await store.deliver("alice", SMALL)
        await store.deliver("alice", SMALL)
        maildrop = await store.open("alice")
        first, second = (info.key for info in maildrop.listing)
        await asyncio.to_thread(
            pg_server.sql, "DELETE FROM messages WHERE id = $1", int(first), database=db
        )
        with pytest.raises(MessageGone):
            await read_all(maildrop, first)
        await maildrop.record_retrievals([first, second], 1_800_000_000.5)
        assert await maildrop.delete([first]) == DeleteResult(removed=(first,), failed=())
        await maildrop.close()
        with pytest.raises(StoreError, match="closed"):
            await read_all(maildrop, second)

    run(pg_url, scenario)
    rows = pg_server.sql(
        "SELECT extract(epoch FROM first_retrieved)::float8 FROM messages", database=db
    )
    assert [row[0] for row in rows] == [1_800_000_000.5]


def test_unreachable_database(caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql://popbox:{PASSWORD}@127.0.0.1:1/popbox"

    async def scenario(store: PostgresStore) -> None:
        with pytest.raises(StoreError, match=r"popbox:\*\*\*@127\.0\.0\.1:1/popbox: "):
            await store.open("alice")
        with pytest.raises(StoreError, match="next attempt in"):  # the backoff pause
            await store.deliver("alice", SMALL)

    run(url, scenario)
    assert PASSWORD not in caplog.text


def test_backoff_grows_and_resets() -> None:
    now = [100.0]
    backoff = Backoff(0.25, 1.0, clock=lambda: now[0])
    assert backoff.waiting == 0
    assert [backoff.failed() for _ in range(4)] == [0.25, 0.5, 1.0, 1.0]
    assert backoff.waiting == 1.0
    now[0] += 0.4
    assert backoff.waiting == pytest.approx(0.6)
    backoff.succeeded()
    assert backoff.waiting == 0
    assert backoff.failed() == 0.25


# --- popbox import ----------------------------------------------------------------------

MESSAGES = [b"Subject: one\n\nfirst\n", b"Subject: two\r\n\r\n.dot\r\n", BIG]


def served(store: MaildirStore | MboxStore, user: str) -> list[tuple[str, bytes]]:
    async def main() -> list[tuple[str, bytes]]:
        maildrop = await store.open(user)
        try:
            found = []
            for info in maildrop.listing:
                data = b"".join([block async for block in maildrop.read(info.key)])
                found.append((info.unique_id, data))
            return found
        finally:
            await maildrop.close()

    return asyncio.run(main())


def imported(url: str, spec: str) -> tuple[int, int]:
    async def scenario(store: PostgresStore) -> tuple[int, int]:
        source = await open_source(spec)
        try:
            result = await import_messages(source, store, "alice")
        finally:
            await source.close()
        return result.imported, result.skipped

    return run(url, scenario)


def in_database(url: str) -> list[tuple[str, bytes]]:
    async def scenario(store: PostgresStore) -> list[tuple[str, bytes]]:
        maildrop = await store.open("alice")
        try:
            return [
                (info.unique_id, b"".join(await read_all(maildrop, info.key)))
                for info in maildrop.listing
            ]
        finally:
            await maildrop.close()

    return run(url, scenario)


def test_import_maildir_keeps_uidls_and_is_idempotent(tmp_path: Path, pg_url: str) -> None:
    maildir = tmp_path / "alice" / "Maildir"
    names = write_maildir(maildir, MESSAGES)
    before = served(MaildirStore(str(tmp_path / "%u" / "Maildir")), "alice")
    assert [uidl for uidl, _ in before] == names
    assert imported(pg_url, f"maildir:{maildir}") == (3, 0)
    assert in_database(pg_url) == before
    assert imported(pg_url, f"maildir:{maildir}") == (0, 3)  # nothing twice

    async def delete_first(store: PostgresStore) -> None:
        maildrop = await store.open("alice")
        await maildrop.delete([maildrop.listing[0].key])
        await maildrop.close()

    run(pg_url, delete_first)
    assert imported(pg_url, f"maildir:{maildir}") == (0, 3)  # nor back after a deletion
    assert in_database(pg_url) == before[1:]
    assert sorted(path.name for path in (maildir / "new").iterdir()) == names  # untouched


def test_import_mbox_keeps_uidls(tmp_path: Path, pg_url: str) -> None:
    mbox = tmp_path / "alice"
    mbox.write_bytes(
        b"From a@example.org Thu Nov 26 12:00:00 2026\nSubject: one\n\n>From quoted\n\n"
        b"From b@example.org Thu Nov 26 12:01:00 2026\nX-UIDL: kept-1\nSubject: two\n\nx\n"
    )
    original = mbox.read_bytes()
    before = served(MboxStore(str(tmp_path / "%u")), "alice")
    assert before[1][0] == "kept-1"
    assert imported(pg_url, f"mbox:{mbox}") == (2, 0)
    assert in_database(pg_url) == before
    assert mbox.read_bytes() == original


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("maildir:{dir}/nothing", "is not a Maildir"),
        ("mbox:{dir}/nothing", "no such mbox file"),
        ("imap:{dir}", "expected maildir:PATH or mbox:PATH"),
    ],
)
def test_import_refuses_a_missing_source(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(ImportSourceError, match=message):
        asyncio.run(open_source(spec.format(dir=tmp_path)))
    assert not (tmp_path / "nothing").exists()
