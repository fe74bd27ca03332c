"""What `popbox serve` does with its PostgreSQL databases at start and at the end.

asyncpg is imported only when a database is configured: importing it costs about a
quarter of a second, which `popbox deliver` on Maildir (run once per message) need not pay.
"""

from __future__ import annotations

import asyncio
import logging

from popbox.config import Config, ConfigError
from popbox.db.url import redact

__all__ = ["check_schemas", "close_backends", "database_urls", "preload_databases"]

log = logging.getLogger("popbox.server")


def database_urls(config: Config) -> list[tuple[str, str]]:
    """(key, URL) of every PostgreSQL database the config names, each URL once."""
    found: dict[str, str] = {}
    if config.mail.scheme == "postgresql":
        found.setdefault(config.mail.location, "mail.location")
    if config.auth.database is not None:
        found.setdefault(config.auth.database, "auth.database")
    return [(key, url) for url, key in found.items()]


def preload_databases(config: Config) -> None:
    """Import the PostgreSQL code now when the config uses a database: `popbox serve`
    calls this before it gives root up, since the user it becomes may not be able to read
    the library's files."""
    if database_urls(config):
        import popbox.auth.pgusers  # noqa: PLC0415
        import popbox.db.database  # noqa: PLC0415
        import popbox.db.migrations  # noqa: PLC0415
        import popbox.storage.postgresql  # noqa: PLC0415, F401


async def check_schemas(config: Config) -> None:
    """Refuse to start (ConfigError naming the key) on a database whose schema is not the
    one this popbox knows. A database that cannot be reached now only gets a warning: the
    server starts, answers -ERR [SYS/TEMP] meanwhile, and uses it once it is back."""
    urls = database_urls(config)
    if not urls:
        return
    import asyncpg  # noqa: PLC0415

    from popbox.db.database import (  # noqa: PLC0415
        CLOSE_TIMEOUT,
        CONNECT_TIMEOUT,
        DB_ERRORS,
        describe,
    )
    from popbox.db.migrations import SCHEMA_VERSION, schema_version  # noqa: PLC0415

    for key, url in urls:
        shown = redact(url)
        try:
            conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
            try:
                version = await schema_version(conn)
            finally:
                await conn.close(timeout=CLOSE_TIMEOUT)
        except DB_ERRORS as exc:
            log.warning(
                "%s: database %s unreachable at start (%s); logins get -ERR [SYS/TEMP] "
                "until it answers",
                key,
                shown,
                describe(exc),
            )
            continue
        if version < SCHEMA_VERSION:
            raise ConfigError(
                f"database {shown} has schema version {version}, this popbox needs "
                f"{SCHEMA_VERSION}: run `popbox db migrate`",
                key,
            )
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"database {shown} has schema version {version}, newer than this popbox's "
                f"{SCHEMA_VERSION}",
                key,
            )


async def close_backends(*backends: object) -> None:
    """Close what a store or authenticator keeps open (a database pool), if anything."""
    for backend in backends:
        aclose = getattr(backend, "aclose", None)
        if aclose is not None:
            from popbox.db.database import CLOSE_TIMEOUT, DB_ERRORS, describe  # noqa: PLC0415

            try:
                await asyncio.wait_for(aclose(), CLOSE_TIMEOUT)
            except DB_ERRORS as exc:
                log.warning("closing %r: %s", backend, describe(exc))
