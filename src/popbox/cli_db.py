"""`popbox db migrate`, `popbox import` and `popbox user ...` against PostgreSQL.

Every message shows database URLs redacted: a password in a URL never reaches the
terminal or a log. asyncpg is imported only when a command needs it (see db/startup.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from popbox.config import Config, ConfigError, load_config
from popbox.db.startup import close_backends, database_urls
from popbox.db.url import check_database_url

if TYPE_CHECKING:
    from popbox.db.database import Database

_T = TypeVar("_T")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `db` and `import` commands (cli.py adds the others)."""
    db = sub.add_parser("db", help="the PostgreSQL schema")
    db_actions = db.add_subparsers(dest="action", required=True)
    migrate_parser = db_actions.add_parser("migrate", help="create or upgrade the schema")
    source = migrate_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="every postgresql:// URL in this config")
    source.add_argument("--database", metavar="URL", help="this database")

    imports = sub.add_parser("import", help="move Maildir or mbox mail into PostgreSQL")
    imports.add_argument("--config", type=Path, required=True)
    imports.add_argument("--from", dest="source", required=True, metavar="maildir:PATH|mbox:PATH")
    imports.add_argument("--uidl-format", choices=("popbox", "dovecot", "courier"))
    imports.add_argument("--xuidl", action="store_true", default=None)
    imports.add_argument("--mbox-format", choices=("mboxo", "mboxrd"))
    imports.add_argument("user", metavar="USER")


def _say(command: str, text: str) -> None:
    print(f"popbox {command}: {text}", file=sys.stderr)


def db_command(args: argparse.Namespace) -> int:
    if args.database is not None:
        try:
            targets = [("--database", check_database_url(args.database))]
        except ValueError as exc:
            _say("db migrate", str(exc))
            return EXIT_CONFIG
    else:
        config = load_config(args.config)
        targets = database_urls(config)
        if not targets:
            raise ConfigError(
                "names no postgresql:// database (mail.location, auth.database)",
                source=str(args.config),
            )
    status = EXIT_OK
    for _key, url in targets:
        if not asyncio.run(_migrate(url)):
            status = EXIT_FAILED
    return status


async def _migrate(url: str) -> bool:
    from popbox.db.database import DB_ERRORS, Database, DatabaseUnavailable, describe  # noqa: PLC0415
    from popbox.db.migrations import SCHEMA_VERSION, SchemaTooNew, migrate  # noqa: PLC0415

    db = Database(url)
    try:
        conn = await db.connect()
    except DatabaseUnavailable as exc:
        _say("db migrate", str(exc))
        return False
    try:
        applied = await migrate(conn)
    except SchemaTooNew as exc:
        _say("db migrate", f"{db.display}: {exc}")
        return False
    except DB_ERRORS as exc:
        _say("db migrate", f"{db.display}: {describe(exc)}")
        return False
    finally:
        await conn.close()
    if applied:
        names = ", ".join(f"{step.version} ({step.name})" for step in applied)
        print(f"{db.display}: schema at version {SCHEMA_VERSION}; applied {names}")
    else:
        print(f"{db.display}: schema at version {SCHEMA_VERSION}; nothing to do")
    return True


def import_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if config.mail.scheme != "postgresql":
        raise ConfigError(
            "`popbox import` moves mail into a postgresql:// location",
            "mail.location",
            str(args.config),
        )
    return asyncio.run(_import(args, config))


async def _import(args: argparse.Namespace, config: Config) -> int:
    from popbox.db.database import DatabaseUnavailable  # noqa: PLC0415
    from popbox.server.assembly import make_authenticator  # noqa: PLC0415
    from popbox.storage.base import StoreError  # noqa: PLC0415
    from popbox.storage.postgresql import PostgresStore  # noqa: PLC0415
    from popbox.storage.postgresql_import import (  # noqa: PLC0415
        ImportSourceError,
        import_messages,
        open_source,
    )

    authenticator = make_authenticator(config)
    store = PostgresStore(config.mail.location)
    try:
        try:
            user = await authenticator.canonical_user(args.user)
        except OSError as exc:
            _say("import", f"cannot read the user list: {exc.strerror or exc}")
            return EXIT_FAILED
        if user is None:
            _say("import", f"no such user: {args.user}")
            return EXIT_FAILED
        mail = config.mail
        try:
            source = await open_source(
                args.source,
                uidl_format=args.uidl_format or mail.uidl_format,
                xuidl=mail.xuidl if args.xuidl is None else args.xuidl,
                mbox_format=args.mbox_format or mail.mbox_format,
            )
        except (ImportSourceError, StoreError) as exc:
            _say("import", str(exc))
            return EXIT_FAILED
        try:
            result = await import_messages(source, store, user)
        except (StoreError, DatabaseUnavailable) as exc:
            _say("import", f"stopped: {exc} (what was imported stays; run it again)")
            return EXIT_FAILED
        finally:
            await source.close()
    finally:
        await close_backends(store, authenticator)
    gone = f", {result.gone} vanished meanwhile" if result.gone else ""
    print(
        f"imported {result.imported} messages from {args.source} into the maildrop of "
        f"{user} ({result.skipped} already there{gone})"
    )
    return EXIT_OK


# --- `popbox user ...` with [auth] database ---------------------------------------------


def user_db_command(args: argparse.Namespace, url: str, password: Callable[[], str]) -> int:
    """`popbox user add|passwd|del|list` on the users table at `url`."""
    from popbox.auth import pgusers, schemes  # noqa: PLC0415
    from popbox.auth.usernames import InvalidUsername  # noqa: PLC0415
    from popbox.db.database import Database, DatabaseUnavailable  # noqa: PLC0415

    db = Database(url)
    action: str = args.action
    try:
        if action == "list":
            for name in _run(db, pgusers.list_users(db)):
                print(name)
        elif action == "add":
            name = _run(db, pgusers.add_user(db, args.name, password(), args.scheme.upper()))
            print(f"user {name} added to {db.display}")
        elif action == "passwd":
            secret = password()
            name = _run(db, pgusers.set_password(db, args.name, secret, args.scheme.upper()))
            print(f"password of {name} changed in {db.display}")
        elif action == "del":
            name = _run(db, pgusers.delete_user(db, args.name))
            print(f"user {name} removed from {db.display}")
    except (
        pgusers.UserDatabaseError,
        DatabaseUnavailable,
        InvalidUsername,
        schemes.UnknownScheme,
        ValueError,
    ) as exc:
        _say(f"user {action}", str(exc))
        return EXIT_FAILED
    return EXIT_OK


def _run(db: Database, work: Awaitable[_T]) -> _T:
    async def main() -> _T:
        try:
            return await work
        finally:
            await db.close()

    return asyncio.run(main())
