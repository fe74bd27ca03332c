"""The PostgreSQL mail store: `[mail] location = "postgresql://..."`, shared by any number
of popbox nodes (the schema is in popbox/db/sql/, created by `popbox db migrate`).

PostgresStore.open(user) gives the session its own connection and takes the RFC 1939
section 8 exclusive lock there as a session-level advisory lock, pg_try_advisory_lock
(MAILDROP_LOCK_CLASS, maildrops.id): it holds across processes and machines, and vanishes
with the connection when a node dies. The listing snapshot is read once; messages stream
from `message_blocks` a few 64 KiB blocks per query; UPDATE removes messages in one
transaction on the locked connection. Delivery inserts the message row and its blocks in
one transaction, so a message is visible whole or not at all.

UIDLs (RFC 1939 section 7) are a stored column: delivered messages get one from a sequence
(`pg` and 12 hex digits), never handed out twice; imported ones keep what their old store
served (storage/postgresql_import.py). Sizes on the wire (RFC 1939 section 11) are counted
at delivery. A database that cannot be reached is StoreError (`-ERR [SYS/TEMP]`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence

import asyncpg

from popbox.auth.usernames import InvalidUsername, validate_username
from popbox.db.database import (
    CLOSE_TIMEOUT,
    DB_ERRORS,
    AnyConnection,
    Database,
    DatabaseUnavailable,
    describe,
)
from popbox.db.migrations import MAILDROP_LOCK_CLASS
from popbox.storage.base import (
    READ_BLOCK_SIZE,
    DeleteResult,
    InvalidMaildropUser,
    MaildropLocked,
    MessageGone,
    MessageInfo,
    StoreError,
)
from popbox.storage.octets import wire_octets

__all__ = ["PostgresMaildrop", "PostgresStore", "ensure_maildrop", "maildrop_name"]

log = logging.getLogger(__name__)

# Blocks fetched per query while streaming (as the file stores read per thread hop): at
# most this many READ_BLOCK_SIZE blocks sit in memory per reader.
BLOCKS_PER_QUERY = 4

_FIND_MAILDROP = "SELECT id FROM maildrops WHERE name = $1"
_ADD_MAILDROP = """
INSERT INTO maildrops (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id"""
_TRY_LOCK = "SELECT pg_try_advisory_lock($1, $2)"
_LISTING = """
SELECT id, octets, unique_id, extract(epoch FROM first_retrieved)::float8 AS first_retrieved
FROM messages WHERE maildrop_id = $1 ORDER BY id"""
_MESSAGE_EXISTS = "SELECT 1 FROM messages WHERE id = $1 AND maildrop_id = $2"
_BLOCKS = """
SELECT seq, data FROM message_blocks WHERE message_id = $1 AND seq >= $2
ORDER BY seq LIMIT $3"""
_DELETE = "DELETE FROM messages WHERE maildrop_id = $1 AND id = ANY($2::bigint[])"
_RECORD_RETRIEVALS = """
UPDATE messages SET first_retrieved = to_timestamp($3)
WHERE maildrop_id = $1 AND id = ANY($2::bigint[]) AND first_retrieved IS NULL"""
_INSERT_MESSAGE = """
INSERT INTO messages (maildrop_id, octets, stored_octets) VALUES ($1, $2, $3) RETURNING id"""
INSERT_BLOCK = "INSERT INTO message_blocks (message_id, seq, data) VALUES ($1, $2, $3)"


def maildrop_name(user: str) -> str:
    """`user` if it can own a maildrop; InvalidMaildropUser (nothing touched) if not. The
    same names as the file stores accept, so a maildrop can move between them."""
    try:
        return validate_username(user)
    except InvalidUsername as exc:
        raise InvalidMaildropUser(f"invalid user name {user!r}: {exc}") from exc


async def ensure_maildrop(conn: AnyConnection, name: str) -> int:
    """The id of `name`'s maildrop row, made if missing (a user with no mail yet)."""
    for _ in range(2):
        found: int | None = await conn.fetchval(_FIND_MAILDROP, name)
        if found is None:
            found = await conn.fetchval(_ADD_MAILDROP, name)
        if found is not None:
            return found
        # Another connection added it between our two statements: the next SELECT sees it.
    raise StoreError(f"cannot create the maildrop of {name!r}")


class PostgresStore:
    """Maildrops in the database at `url`; one per user, made on first use."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)

    def __repr__(self) -> str:
        return f"PostgresStore({self.db.display!r})"

    async def open(self, user: str) -> PostgresMaildrop:
        """Lock and snapshot the user's maildrop on a connection of its own.

        Raises InvalidMaildropUser, MaildropLocked or StoreError.
        """
        name = maildrop_name(user)
        try:
            conn = await self.db.connect()
        except DatabaseUnavailable as exc:
            raise StoreError(str(exc)) from exc
        try:
            maildrop_id = await ensure_maildrop(conn, name)
            if not await conn.fetchval(_TRY_LOCK, MAILDROP_LOCK_CLASS, maildrop_id):
                raise MaildropLocked(f"maildrop of {name!r} is locked by another session")
            rows = await conn.fetch(_LISTING, maildrop_id)
        except BaseException as exc:
            conn.terminate()  # ends the backend, and with it any lock it took
            if isinstance(exc, DB_ERRORS):
                raise StoreError(f"{self.db.display}: {describe(exc)}") from exc
            raise
        # The key is messages.id: the listing order, and what read() and delete() use.
        listing = [MessageInfo(str(row[0]), row[1], row[2], row[3]) for row in rows]
        return PostgresMaildrop(conn, name, maildrop_id, listing)

    async def deliver(self, user: str, message: bytes) -> None:
        """Store one message: its row and its blocks in one transaction. Takes no lock:
        an open session keeps its snapshot. Raises InvalidMaildropUser or StoreError."""
        name = maildrop_name(user)
        view = memoryview(message)
        size = READ_BLOCK_SIZE
        blocks = [view[start : start + size] for start in range(0, len(view), size)]
        try:
            async with self.db.acquire() as conn, conn.transaction():
                maildrop_id = await ensure_maildrop(conn, name)
                message_id = await conn.fetchval(
                    _INSERT_MESSAGE, maildrop_id, wire_octets(message), len(message)
                )
                await conn.executemany(
                    INSERT_BLOCK, [(message_id, seq, block) for seq, block in enumerate(blocks)]
                )
        except DatabaseUnavailable as exc:
            raise StoreError(str(exc)) from exc

    async def aclose(self) -> None:
        """Close the pool (sessions close their own connections)."""
        await self.db.close()


class PostgresMaildrop:
    """An open, locked maildrop: the session's connection holds the advisory lock."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        name: str,
        maildrop_id: int,
        listing: list[MessageInfo],
    ) -> None:
        self.name = name
        self.maildrop_id = maildrop_id
        self._conn: asyncpg.Connection | None = conn
        self._listing = listing
        self._ids = {info.key: int(info.key) for info in listing}

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "locked"
        return f"<PostgresMaildrop {self.name!r} {len(self._listing)} messages {state}>"

    @property
    def listing(self) -> Sequence[MessageInfo]:
        return self._listing

    @property
    def closed(self) -> bool:
        return self._conn is None

    def _connection(self) -> asyncpg.Connection:
        if self._conn is None:
            raise StoreError(f"maildrop of {self.name!r} is closed")
        return self._conn

    def _message_ids(self, keys: Sequence[str]) -> list[int]:
        # An unknown key is the caller's bug (KeyError), not a vanished message.
        return [self._ids[key] for key in dict.fromkeys(keys)]

    async def read(self, key: str) -> AsyncGenerator[bytes, None]:
        """Yield the message as stored, BLOCKS_PER_QUERY blocks per query.

        Raises MessageGone before the first block if the message is gone, StoreError if
        the database fails, KeyError for a key not in the listing.
        """
        conn = self._connection()
        message_id = self._ids[key]
        try:
            exists = await conn.fetchval(_MESSAGE_EXISTS, message_id, self.maildrop_id)
        except DB_ERRORS as exc:
            raise StoreError(f"cannot read message {key}: {describe(exc)}") from exc
        if exists is None:
            raise MessageGone(f"message {key} is gone from the maildrop of {self.name!r}")
        seq = 0
        while True:
            try:
                rows = await conn.fetch(_BLOCKS, message_id, seq, BLOCKS_PER_QUERY)
            except DB_ERRORS as exc:
                raise StoreError(f"cannot read message {key}: {describe(exc)}") from exc
            for row in rows:
                yield row[1]
            if len(rows) < BLOCKS_PER_QUERY:
                return
            seq = rows[-1][0] + 1

    async def delete(self, keys: Sequence[str]) -> DeleteResult:
        """Remove the messages (RFC 1939 section 6, UPDATE) in one transaction on the
        locked connection: all of them, or (the database failed) none."""
        conn = self._connection()
        unique = list(dict.fromkeys(keys))
        ids = self._message_ids(unique)
        if not ids:
            return DeleteResult(removed=(), failed=())
        try:
            async with conn.transaction():
                await conn.execute(_DELETE, self.maildrop_id, ids)
        except DB_ERRORS as exc:
            log.error("cannot delete %d messages of %s: %s", len(ids), self.name, describe(exc))
            return DeleteResult(removed=(), failed=tuple(unique))
        return DeleteResult(removed=tuple(unique), failed=())

    async def record_retrievals(self, keys: Sequence[str], when: float) -> None:
        """Remember `when` as the first retrieval time (RFC 2449 section 6.7 EXPIRE) of
        the messages that have none yet. Raises StoreError."""
        conn = self._connection()
        ids = self._message_ids(keys)
        if not ids:
            return
        try:
            await conn.execute(_RECORD_RETRIEVALS, self.maildrop_id, ids, when)
        except DB_ERRORS as exc:
            raise StoreError(f"cannot record retrievals: {describe(exc)}") from exc

    async def message_changed(self, key: str) -> None:
        """Messages never change in the database (their octets are counted at delivery)."""

    async def close(self) -> None:
        """End the session's connection, which releases the lock. Safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.close(timeout=CLOSE_TIMEOUT)
        except DB_ERRORS:
            conn.terminate()
        except BaseException:
            conn.terminate()
            raise
