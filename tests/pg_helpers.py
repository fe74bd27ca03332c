"""A real PostgreSQL for the tests (a pytest plugin: `-p pg_helpers` in pyproject.toml).

One server per test session: initdb into a fresh temporary directory, then `postgres` on a
free loopback port with its unix socket in that directory, tuned for speed (fsync off: the
data is thrown away). PostgreSQL refuses to run as root, so when the tests run as root the
server runs as the `postgres` user Debian's package creates (or `nobody`).

Every test gets its own database (`pg_url`), copied from a template that `popbox db
migrate`'s code has already migrated, and dropped afterwards: tests stay independent.
The role popbox connects as has a password, so the tests can check it never reaches a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

ROLE = "popbox"
# Distinctive, so a test can grep every log for it.
PASSWORD = "pg-Secret-7f3a9"
TEMPLATE = "popbox_template"
SUPERUSER = "postgres"
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "max_wal_size": "1GB",
}


def find_bin() -> Path | None:
    """The newest Debian PostgreSQL's bin directory (postgresql-NN), if installed."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as() -> str | None:
    """The unprivileged user to run PostgreSQL as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root, and no postgres or nobody user to run PostgreSQL")


@dataclass
class PostgresServer:
    bindir: Path
    directory: Path
    port: int
    user: str | None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "postgres.log"

    def _command(self, *argv: str) -> list[str]:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        return command if self.user is None else ["runuser", "-u", self.user, "--", *command]

    def _run(self, *argv: str) -> None:
        subprocess.run(self._command(*argv), check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "-E", "UTF8", "--locale=C",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "--no-instructions",
        )  # fmt: skip
        settings = {
            **SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = '{value}'\n" for key, value in settings.items())

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_file), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        command = self._command("pg_ctl", "-D", str(self.data), "status")
        return subprocess.run(command, check=False, capture_output=True).returncode == 0

    def url(self, database: str, *, password: str = PASSWORD) -> str:
        """What a popbox config names: TCP on loopback, the role's password in it."""
        return f"postgresql://{ROLE}:{password}@127.0.0.1:{self.port}/{database}"

    def sql(self, query: str, *args: object, database: str = "postgres") -> list[Any]:
        """Run one statement as the superuser (over the unix socket); the rows."""

        async def run() -> list[Any]:
            conn = await self._connect(database)
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()

        return asyncio.run(run())

    def script(self, statements: str, *, database: str) -> None:
        """Run several statements (no parameters) as the superuser."""

        async def run() -> None:
            conn = await self._connect(database)
            try:
                await conn.execute(statements)
            finally:
                await conn.close()

        asyncio.run(run())

    async def _connect(self, database: str) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=str(self.directory), port=self.port, user=SUPERUSER, database=database
        )

    def create_database(self, name: str, template: str = TEMPLATE) -> None:
        # FILE_COPY: a plain directory copy, much faster than WAL_LOG for small databases.
        self.sql(f'CREATE DATABASE "{name}" OWNER {ROLE} TEMPLATE "{template}" STRATEGY FILE_COPY')

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_names = itertools.count()


def start_server() -> PostgresServer:
    bindir = find_bin()
    if bindir is None:
        pytest.skip("postgresql is not installed (scripts/test installs it)")
    user = _run_as()
    directory = Path(tempfile.mkdtemp(prefix="popbox-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    # The socket directory must be reachable by the test process and popbox (root here).
    directory.chmod(0o755)
    server = PostgresServer(bindir, directory, _free_port(), user)
    try:
        server.init()
        server.start()
        server.sql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        server.create_database(TEMPLATE, template="template0")
        migrate(server.url(TEMPLATE))
    except BaseException:
        if server.running():
            server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return server


def migrate(url: str) -> Sequence[int]:
    from popbox.db.migrations import migrate_url  # noqa: PLC0415

    return asyncio.run(migrate_url(url))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = start_server()
    try:
        yield server
    finally:
        if server.running():
            server.stop("immediate")
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
def pg_database(pg_server: PostgresServer) -> Iterator[str]:
    """The name of a fresh database with popbox's schema, dropped after the test."""
    name = f"t{os.getpid()}_{next(_names)}"
    if not pg_server.running():  # a test that stopped it failed before restarting it
        pg_server.start()
    pg_server.create_database(name)
    yield name
    if not pg_server.running():
        pg_server.start()
    pg_server.drop_database(name)


@pytest.fixture
def pg_url(pg_server: PostgresServer, pg_database: str) -> str:
    """postgresql://popbox:PASSWORD@127.0.0.1:PORT/DB for a fresh migrated database."""
    return pg_server.url(pg_database)


@pytest.fixture
def pg_empty_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database without popbox's schema (for `popbox db migrate`)."""
    name = f"e{os.getpid()}_{next(_names)}"
    pg_server.create_database(name, template="template0")
    yield pg_server.url(name)
    if not pg_server.running():
        pg_server.start()
    pg_server.drop_database(name)


# --- `popbox serve` on PostgreSQL (tests/server/test_serve_postgresql*.py, test_cli) -----


def write_pg_config(
    root: Path,
    mail: str,
    *,
    users_url: str | None = None,
    users: dict[str, str] | None = None,
    extra: str = "",
) -> Path:
    """A config on a free port with `[mail] location = mail` and the users either in the
    database at `users_url` or in a passwd-file holding `users`; `extra` is more TOML."""
    from server_helpers import HOSTNAME  # noqa: PLC0415

    root.mkdir(parents=True, exist_ok=True)
    if users_url is not None:
        auth = f'database = "{users_url}"\n'
    else:
        (root / "users").write_text("".join(f"{u}:{s}\n" for u, s in (users or {}).items()))
        auth = 'passwd_file = "users"\n'
    config = root / "popbox.toml"
    config.write_text(
        f'hostname = "{HOSTNAME}"\nidle_timeout = 600\nworkers = 1\nshutdown_timeout = 0\n'
        '[[listen]]\naddress = "127.0.0.1"\nport = 0\n'
        f'[mail]\nlocation = "{mail}"\n'
        f"[auth]\n{auth}failure_delay = 0.3\nfailure_delay_max = 0.3\n" + extra
    )
    return config


def deliver(url: str, user: str, messages: Sequence[bytes]) -> None:
    """Put messages into `user`'s maildrop through the store, as a delivery would."""
    from popbox.storage.postgresql import PostgresStore  # noqa: PLC0415

    async def run() -> None:
        store = PostgresStore(url)
        try:
            for message in messages:
                await store.deliver(user, message)
        finally:
            await store.aclose()

    asyncio.run(run())


def add_users(url: str, users: dict[str, tuple[str, str]]) -> None:
    """{name: (password, scheme)} into the users table, as `popbox user add` does."""
    from popbox.auth import pgusers  # noqa: PLC0415
    from popbox.db.database import Database  # noqa: PLC0415

    async def run() -> None:
        db = Database(url)
        try:
            for name, (password, scheme) in users.items():
                await pgusers.add_user(db, name, password, scheme)
        finally:
            await db.close()

    asyncio.run(run())
