"""`popbox import --from maildir:PATH USER` (or mbox:PATH): existing mail into the
PostgreSQL store, keeping the UIDLs the old store served.

The source is read through the store that served it (MaildirStore, MboxStore, with the
same UIDL settings), so each message keeps exactly the UIDL (RFC 1939 section 7) POP3
clients already know and do not download it again; its first-retrieval time (EXPIRE)
comes along. The source is locked like a POP3 session while importing and is never
changed by the import (a Maildir may gain popbox's cache file, as after any login).

Each message is copied block by block in its own transaction (never whole in memory), its
UIDL recorded in `imported_uidls`: running the import again skips every UIDL the maildrop
has or had, so it neither duplicates mail nor brings back mail the user deleted since.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from popbox.db.database import AnyConnection
from popbox.storage.base import Maildrop, MessageGone, MessageInfo
from popbox.storage.maildir import MaildirStore
from popbox.storage.maildir_uidl import UidlFormat
from popbox.storage.mbox import MboxStore
from popbox.storage.mbox_format import MboxFormat
from popbox.storage.octets import WireOctetCounter
from popbox.storage.postgresql import INSERT_BLOCK, PostgresStore, ensure_maildrop, maildrop_name

__all__ = ["ImportResult", "ImportSourceError", "import_messages", "open_source"]

SOURCE_SCHEMES = ("maildir", "mbox")

_KNOWN_UIDLS = """
SELECT unique_id FROM messages WHERE maildrop_id = $1
UNION SELECT unique_id FROM imported_uidls WHERE maildrop_id = $1"""
_INSERT_IMPORTED = """
INSERT INTO messages (maildrop_id, unique_id, octets, stored_octets, first_retrieved)
VALUES ($1, $2, 0, 0, to_timestamp($3)) RETURNING id"""
_SET_SIZES = "UPDATE messages SET octets = $2, stored_octets = $3 WHERE id = $1"
_REMEMBER = "INSERT INTO imported_uidls (maildrop_id, unique_id) VALUES ($1, $2)"


class ImportSourceError(Exception):
    """The source is not usable (not a Maildir, no such mbox, bad spec)."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    imported: int  # messages copied now
    skipped: int  # UIDLs the maildrop has or had already
    gone: int  # vanished from the source during the import


# The file stores find a maildrop from a template and a user; here the path is given, so
# location() is that path whatever the user (the template only has to be a valid one).
class _OneMaildir(MaildirStore):
    def __init__(self, path: str, uidl_format: UidlFormat, xuidl: bool) -> None:
        super().__init__("/%u", uidl_format=uidl_format, xuidl=xuidl)
        self.path = path

    def location(self, user: str) -> str:
        return self.path


class _OneMbox(MboxStore):
    def __init__(self, path: str, mbox_format: MboxFormat) -> None:
        super().__init__("/%u", mbox_format=mbox_format)
        self.path = path

    def location(self, user: str) -> str:
        return self.path


async def open_source(
    spec: str,
    *,
    uidl_format: UidlFormat = "popbox",
    xuidl: bool = False,
    mbox_format: MboxFormat = "mboxo",
) -> Maildrop:
    """Open and lock `maildir:PATH` or `mbox:PATH` as a POP3 session would. Raises
    ImportSourceError, or the store's errors (MaildropLocked, StoreError)."""
    scheme, _, path = spec.partition(":")
    if scheme not in SOURCE_SCHEMES or not path:
        raise ImportSourceError(f"expected maildir:PATH or mbox:PATH, got {spec!r}")
    path = os.path.abspath(path)
    if scheme == "maildir":
        # MaildirStore makes a missing maildrop; an import must not invent its source.
        if not any((Path(path) / sub).is_dir() for sub in ("cur", "new")):
            raise ImportSourceError(f"{path} is not a Maildir (no cur/ or new/)")
        return await _OneMaildir(path, uidl_format, xuidl).open("import")
    if not Path(path).is_file():
        raise ImportSourceError(f"{path}: no such mbox file")
    return await _OneMbox(path, mbox_format).open("import")


async def import_messages(source: Maildrop, store: PostgresStore, user: str) -> ImportResult:
    """Copy every message of `source` whose UIDL `user`'s maildrop never had. Raises
    StoreError (the source) or DatabaseUnavailable; what was copied stays copied."""
    name = maildrop_name(user)
    imported = skipped = gone = 0
    async with store.db.acquire() as conn:
        maildrop_id = await ensure_maildrop(conn, name)
        known = {row[0] for row in await conn.fetch(_KNOWN_UIDLS, maildrop_id)}
        for info in source.listing:
            if info.unique_id in known:
                skipped += 1
                continue
            try:
                async with conn.transaction():
                    await _copy(conn, maildrop_id, source, info)
            except MessageGone:
                gone += 1
                continue
            known.add(info.unique_id)
            imported += 1
    return ImportResult(imported=imported, skipped=skipped, gone=gone)


async def _copy(conn: AnyConnection, maildrop_id: int, source: Maildrop, info: MessageInfo) -> None:
    message_id = await conn.fetchval(
        _INSERT_IMPORTED, maildrop_id, info.unique_id, info.first_retrieved
    )
    counter = WireOctetCounter()
    stored = 0
    blocks = source.read(info.key)
    try:
        seq = 0
        async for block in blocks:
            await conn.execute(INSERT_BLOCK, message_id, seq, block)
            counter.feed(block)
            stored += len(block)
            seq += 1
    finally:
        aclose = getattr(blocks, "aclose", None)  # the stores' readers are generators
        if aclose is not None:
            await aclose()
    await conn.execute(_SET_SIZES, message_id, counter.octets, stored)
    await conn.execute(_REMEMBER, maildrop_id, info.unique_id)
