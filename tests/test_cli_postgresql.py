"""The command line against PostgreSQL: `popbox db migrate`, `popbox user ...` with
[auth] database, `popbox import`, and `popbox serve` refusing an unmigrated database."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from pg_helpers import PASSWORD, PostgresServer, write_pg_config
from popbox.auth import schemes
from popbox.cli import main
from popbox.db.migrations import SCHEMA_VERSION


def redacted(url: str) -> str:
    return url.replace(PASSWORD, "***")


def test_db_migrate_creates_the_schema_once(
    tmp_path: Path, pg_server: PostgresServer, pg_empty_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_pg_config(tmp_path, pg_empty_url, users_url=pg_empty_url)
    # Before: `popbox serve` refuses the database, naming the key, and starts nothing.
    refused = subprocess.run(
        [sys.executable, "-m", "popbox", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(
        f"mail.location: database {redacted(pg_empty_url)} has schema version 0, this popbox "
        f"needs {SCHEMA_VERSION}: run `popbox db migrate`"
    )
    assert PASSWORD not in refused.stderr
    assert "listening on" not in refused.stderr
    # Mail and users name the same database: it is migrated once.
    assert main(["db", "migrate", "--config", str(config)]) == 0
    assert capsys.readouterr().out == (
        f"{redacted(pg_empty_url)}: schema at version 1; applied 1 (maildrops_messages_users)\n"
    )
    assert main(["db", "migrate", "--database", pg_empty_url]) == 0
    assert (
        capsys.readouterr().out == f"{redacted(pg_empty_url)}: schema at version 1; nothing to do\n"
    )
    database = pg_empty_url.rsplit("/", 1)[1]
    versions = pg_server.sql("SELECT version, name FROM schema_version", database=database)
    assert [tuple(row) for row in versions] == [(1, "maildrops_messages_users")]


def test_db_migrate_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    down = f"postgresql://popbox:{PASSWORD}@127.0.0.1:1/popbox"
    assert main(["db", "migrate", "--database", down]) == 1
    err = capsys.readouterr().err
    assert err.startswith("popbox db migrate: postgresql://popbox:***@127.0.0.1:1/popbox: ")
    assert PASSWORD not in err
    assert main(["db", "migrate", "--database", "mysql://x"]) == 2
    config = write_pg_config(tmp_path, "maildir:mail/%u", users={"alice": "{PLAIN}x"})
    assert main(["db", "migrate", "--config", str(config)]) == 2
    assert "names no postgresql:// database" in capsys.readouterr().err


def test_user_commands_against_the_database(
    tmp_path: Path,
    pg_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_pg_config(tmp_path, "maildir:mail/%u", users_url=pg_url)
    user = ["user", "--config", str(config)]
    monkeypatch.setattr(sys, "stdin", io.StringIO("p4ss word\n"))
    assert main([*user, "add", "bob", "--password-stdin"]) == 0  # ARGON2ID by default
    monkeypatch.setattr(sys, "stdin", io.StringIO("secret\n"))
    assert main([*user, "add", "alice", "--scheme", "plain", "--password-stdin"]) == 0
    assert main([*user, "list"]) == 0
    out = capsys.readouterr().out
    assert out == (
        f"user bob added to {redacted(pg_url)}\nuser alice added to {redacted(pg_url)}\n"
        "alice\nbob\n"
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO("x\n"))
    assert main([*user, "add", "bob", "--password-stdin"]) == 1
    assert capsys.readouterr().err == "popbox user add: user bob already exists\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO("new\n"))
    assert main(["user", "--database", pg_url, "passwd", "bob", "--password-stdin"]) == 0
    assert main([*user, "del", "alice"]) == 0
    assert main([*user, "del", "alice"]) == 1
    monkeypatch.setattr(sys, "stdin", io.StringIO("x\n"))
    assert main([*user, "add", "../x", "--password-stdin"]) == 1
    assert capsys.readouterr().err.endswith("popbox user add: user name contains a '/'\n")

    async def secret_of(name: str) -> str:
        conn = await asyncpg.connect(pg_url)
        try:
            value: str = await conn.fetchval("SELECT secret FROM users WHERE name = $1", name)
            return value
        finally:
            await conn.close()

    stored = asyncio.run(secret_of("bob"))
    assert stored.startswith("{ARGON2ID}$argon2id$")
    assert schemes.verify("new", stored)
    assert main([*user, "list"]) == 0
    assert capsys.readouterr().out == "bob\n"


def test_import_command_errors(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    maildir_config = write_pg_config(tmp_path / "m", "maildir:mail/%u", users={"alice": "{PLAIN}x"})
    assert main(["import", "--config", str(maildir_config), "--from", "mbox:/x", "alice"]) == 2
    assert "mail.location: `popbox import` moves mail into a postgresql://" in (
        capsys.readouterr().err
    )
    config = write_pg_config(tmp_path / "p", pg_url, users={"alice": "{PLAIN}x"})
    assert main(["import", "--config", str(config), "--from", "mbox:/x", "nobody"]) == 1
    assert capsys.readouterr().err == "popbox import: no such user: nobody\n"
    assert main(["import", "--config", str(config), "--from", f"mbox:{tmp_path}/no", "alice"]) == 1
    assert capsys.readouterr().err == f"popbox import: {tmp_path}/no: no such mbox file\n"
    mbox = tmp_path / "alice.mbox"
    mbox.write_bytes(b"From a@b Thu Nov 26 12:00:00 2026\nX-UIDL: u1\nSubject: s\n\nbody\n")
    assert main(["import", "--config", str(config), "--from", f"mbox:{mbox}", "alice"]) == 0
    assert capsys.readouterr().out == (
        f"imported 1 messages from mbox:{mbox} into the maildrop of alice (0 already there)\n"
    )


def test_file_stores_do_not_load_the_database_driver(tmp_path: Path) -> None:
    """Importing asyncpg costs about 0.25 s: `popbox deliver` on a Maildir, run once per
    message by the MTA, must not pay it."""
    config = write_pg_config(tmp_path, "maildir:mail/%u/Maildir", users={"alice": "{PLAIN}x"})
    command = [sys.executable, "-X", "importtime", "-m", "popbox", "deliver"]
    done = subprocess.run(
        [*command, "--config", str(config), "alice"],
        input=b"Subject: x\n\nx\n",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert b"| asyncpg" not in done.stderr
    assert len(list((tmp_path / "mail" / "alice" / "Maildir" / "new").iterdir())) == 1
