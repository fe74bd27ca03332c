"""The versioned schema: ordered SQL steps in popbox/db/sql/NNNN_name.sql, applied by
`popbox db migrate`.

The `schema_version` table lists the steps applied. `migrate` runs every newer step in one
transaction (PostgreSQL's DDL is transactional: a failed step leaves the previous version),
under a transaction-level advisory lock so that two nodes migrating at once take turns.
Running it again does nothing. A database newer than this popbox is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "SchemaTooNew",
    "migrate",
    "migrate_url",
    "schema_version",
]

# Advisory lock keys (two int4): popbox's class, then what is locked. Maildrop sessions use
# (MAILDROP_LOCK_CLASS, maildrops.id); migrations one lock of their own.
MAILDROP_LOCK_CLASS = 0x504F5033  # "POP3"
MIGRATION_LOCK_CLASS = 0x504F5044  # "POPD"

_STEP_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


class SchemaTooNew(Exception):
    """The database was migrated by a newer popbox; this one must not touch it."""


def _load() -> tuple[Migration, ...]:
    steps = []
    for entry in resources.files("popbox.db").joinpath("sql").iterdir():
        found = _STEP_NAME.fullmatch(entry.name)
        if found:
            steps.append(Migration(int(found.group(1)), found.group(2), entry.read_text()))
    steps.sort(key=lambda step: step.version)
    if [step.version for step in steps] != list(range(1, len(steps) + 1)):
        raise RuntimeError("popbox/db/sql: migration numbers must be 1, 2, 3, ...")
    return tuple(steps)


MIGRATIONS = _load()
SCHEMA_VERSION = MIGRATIONS[-1].version

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


async def schema_version(conn: asyncpg.Connection) -> int:
    """The version the database is at; 0 if `popbox db migrate` never ran on it."""
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return 0
    version: int = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
    return version


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every step newer than the database; return them (empty: already current)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", MIGRATION_LOCK_CLASS)
        await conn.execute(_CREATE_VERSION_TABLE)
        current = await schema_version(conn)
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database schema is at version {current}, newer than this popbox's "
                f"{SCHEMA_VERSION}"
            )
        applied = [step for step in MIGRATIONS if step.version > current]
        for step in applied:
            await conn.execute(step.sql)
            await conn.execute(
                "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
                step.version,
                step.name,
            )
    return applied


async def migrate_url(url: str) -> list[int]:
    """Connect, migrate, disconnect; the versions applied."""
    conn = await asyncpg.connect(url)
    try:
        return [step.version for step in await migrate(conn)]
    finally:
        await conn.close()
