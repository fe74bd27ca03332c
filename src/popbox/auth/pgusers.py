"""Users in PostgreSQL: `[auth] database = "postgresql://..."` (the `users` table of
popbox/db/sql/), for logins and for `popbox user add|passwd|del|list`.

A row holds what a passwd-file line holds: the canonical (RFC 8265) name, the secret as
`{SCHEME}secret` in the same schemes (auth/schemes.py), and the per-user settings as
columns (`expire_days`, Dovecot's `userdb_expire_days`). Verification is auth/userdb.py's,
shared with the passwd-file. A database that cannot be reached is a temporary failure
(`-ERR [SYS/TEMP]`), never an unknown user.
"""

from __future__ import annotations

import logging

import asyncpg

from popbox.auth.base import UserSettings
from popbox.auth.oauth import BearerVerifier
from popbox.auth.passwdedit import prepared_hash
from popbox.auth.precis import canonical_username
from popbox.auth.schemes import DEFAULT_SCHEME
from popbox.auth.userdb import UserDatabaseAuthenticator, UserRecord
from popbox.db.database import Database, DatabaseUnavailable

__all__ = [
    "NoSuchUser",
    "PgUsersAuthenticator",
    "UserDatabaseError",
    "UserDatabaseUnavailable",
    "UserExists",
    "add_user",
    "delete_user",
    "list_users",
    "set_password",
]

log = logging.getLogger(__name__)

_FIND = "SELECT name, secret, expire_days FROM users WHERE name = $1"


class UserDatabaseUnavailable(OSError):
    """The user database cannot be read now (the Authenticator interface's OSError)."""


class UserDatabaseError(Exception):
    """A `popbox user ...` edit that cannot be done; the message is for the admin."""


class UserExists(UserDatabaseError):
    pass


class NoSuchUser(UserDatabaseError):
    pass


class PgUsersAuthenticator(UserDatabaseAuthenticator):
    """The Authenticator (auth/base.py) over the `users` table."""

    def __init__(self, url: str, *, oauth: BearerVerifier | None = None) -> None:
        self.db = Database(url)
        super().__init__(f"user database {self.db.display}", oauth=oauth)

    async def find(self, user: str) -> UserRecord | None:
        try:
            async with self.db.acquire() as conn:
                row = await conn.fetchrow(_FIND, user)
        except DatabaseUnavailable as exc:
            log.error("user lookup failed: %s", exc)
            raise UserDatabaseUnavailable(str(exc)) from exc
        if row is None:
            return None
        return UserRecord(row[0], row[1], UserSettings(expire_days=row[2]))

    async def aclose(self) -> None:
        await self.db.close()


# --- `popbox user ...` -----------------------------------------------------------------


async def add_user(db: Database, user: str, password: str, scheme: str = DEFAULT_SCHEME) -> str:
    """Add `user` (its canonical name, returned) with the hashed password."""
    name = canonical_username(user)
    secret = prepared_hash(password, scheme)
    async with db.acquire() as conn:
        try:
            await conn.execute("INSERT INTO users (name, secret) VALUES ($1, $2)", name, secret)
        except asyncpg.UniqueViolationError:
            raise UserExists(f"user {name} already exists") from None
    return name


async def set_password(db: Database, user: str, password: str, scheme: str = DEFAULT_SCHEME) -> str:
    name = canonical_username(user)
    secret = prepared_hash(password, scheme)
    async with db.acquire() as conn:
        status = await conn.execute("UPDATE users SET secret = $2 WHERE name = $1", name, secret)
    if status == "UPDATE 0":
        raise NoSuchUser(f"no user {name}")
    return name


async def delete_user(db: Database, user: str) -> str:
    """Remove the user (not the mail: the maildrop stays until an admin removes it)."""
    name = canonical_username(user)
    async with db.acquire() as conn:
        status = await conn.execute("DELETE FROM users WHERE name = $1", name)
    if status == "DELETE 0":
        raise NoSuchUser(f"no user {name}")
    return name


async def list_users(db: Database) -> list[str]:
    async with db.acquire() as conn:
        return [row[0] for row in await conn.fetch("SELECT name FROM users ORDER BY name")]
