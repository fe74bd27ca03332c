"""Users in PostgreSQL ([auth] database): the `popbox user` edits and every Authenticator
method, against a real database (tests/pg_helpers.py); the verification is the one the
passwd-file uses (auth/userdb.py)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import unicodedata
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from test_auth_passwdfile_bearer import AUDIENCE, ISSUER, signing_key, token

from pg_helpers import PASSWORD, PostgresServer
from popbox.auth import pgusers, schemes, scramkeys
from popbox.auth.base import AuthOutcome, AuthResult, UserSettings
from popbox.auth.oauth import BearerVerifier, OAuthConfig
from popbox.auth.pgusers import PgUsersAuthenticator
from popbox.db.database import Database

_T = TypeVar("_T")
INVALID = AuthResult(AuthOutcome.INVALID_CREDENTIALS)
TEMPORARY = AuthResult(AuthOutcome.TEMPORARY_FAILURE)


def run(url: str, work: Callable[[PgUsersAuthenticator], Awaitable[_T]], **kwargs: object) -> _T:
    async def main() -> _T:
        auth = PgUsersAuthenticator(url, **kwargs)  # type: ignore[arg-type]
        try:
            return await work(auth)
        finally:
            await auth.aclose()

    return asyncio.run(main())


def edit(url: str, work: Callable[[Database], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        db = Database(url)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(main())


@pytest.fixture
def users(pg_url: str) -> str:
    """alice {PLAIN}secret, bob SSHA512 "bob's pw", "jörg" (NFC) MD5-CRYPT: hashes that
    are quick to check (`popbox user add`'s default ARGON2ID is in test_cli_postgresql)."""

    async def setup(db: Database) -> None:
        await pgusers.add_user(db, "alice", "secret", "PLAIN")
        await pgusers.add_user(db, "bob", "bob's pw", "SSHA512")
        await pgusers.add_user(db, "j\u00f6rg", "k\u00e4se", "MD5-CRYPT")

    edit(pg_url, setup)
    return pg_url


def test_user_edits(pg_server: PostgresServer, users: str, pg_database: str) -> None:
    assert edit(users, pgusers.list_users) == ["alice", "bob", "jörg"]
    rows = pg_server.sql("SELECT name, secret FROM users ORDER BY name", database=pg_database)
    assert rows[0]["secret"] == "{PLAIN}secret"
    assert rows[1]["secret"].startswith("{SSHA512}")
    assert rows[2]["secret"].startswith("{MD5-CRYPT}$1$")
    with pytest.raises(pgusers.UserExists, match="user alice already exists"):
        edit(users, lambda db: pgusers.add_user(db, "alice", "x", "PLAIN"))
    # A decomposed name is the same user (RFC 8265 preparation, as at login).
    decomposed = unicodedata.normalize("NFD", "jörg")
    assert edit(users, lambda db: pgusers.set_password(db, decomposed, "new", "PLAIN")) == "jörg"
    assert run(users, lambda auth: auth.verify_password("jörg", "new")).ok
    assert edit(users, lambda db: pgusers.delete_user(db, "bob")) == "bob"
    with pytest.raises(pgusers.NoSuchUser, match="no user bob"):
        edit(users, lambda db: pgusers.delete_user(db, "bob"))
    with pytest.raises(pgusers.NoSuchUser):
        edit(users, lambda db: pgusers.set_password(db, "bob", "x", "PLAIN"))
    with pytest.raises(schemes.UnknownScheme):
        edit(users, lambda db: pgusers.add_user(db, "carol", "x", "NOPE"))
    assert edit(users, pgusers.list_users) == ["alice", "jörg"]


@pytest.mark.parametrize(
    ("user", "password", "expected"),
    [
        ("alice", "secret", AuthResult(AuthOutcome.OK, "alice")),
        ("bob", "bob's pw", AuthResult(AuthOutcome.OK, "bob")),
        (unicodedata.normalize("NFD", "jörg"), "käse", AuthResult(AuthOutcome.OK, "jörg")),
        ("alice", "Secret", INVALID),
        ("bob", "bob", INVALID),
        ("nobody", "secret", INVALID),
        ("alice", "", INVALID),
        ("../etc", "secret", INVALID),
    ],
)
def test_verify_password(users: str, user: str, password: str, expected: AuthResult) -> None:
    assert run(users, lambda auth: auth.verify_password(user, password)) == expected


def test_apop_and_cram_md5_need_a_plain_secret(users: str) -> None:
    timestamp = "<1896.697170952@dbc.mtview.ca.us>"
    digest = hashlib.md5(f"{timestamp}secret".encode()).hexdigest()
    assert run(users, lambda auth: auth.verify_apop("alice", timestamp, digest)).ok
    assert run(users, lambda auth: auth.verify_apop("bob", timestamp, digest)) == INVALID
    challenge = b"<1.2@test>"
    cram = hmac.digest(b"secret", challenge, "md5").hex()
    assert run(users, lambda auth: auth.verify_cram_md5("alice", challenge, cram)).ok
    assert run(users, lambda auth: auth.verify_cram_md5("nobody", challenge, cram)) == INVALID


def test_scram_from_plain_and_from_a_stored_verifier(users: str) -> None:
    derived = run(users, lambda auth: auth.scram_credentials("alice", "SCRAM-SHA-256"))
    assert derived is not None
    assert run(users, lambda auth: auth.scram_credentials("bob", "SCRAM-SHA-256")) is None
    edit(users, lambda db: pgusers.add_user(db, "carol", "c", "SCRAM-SHA-256"))
    stored = run(users, lambda auth: auth.scram_credentials("carol", "SCRAM-SHA-256-PLUS"))
    assert stored is not None
    # The stored verifier proves the password: its StoredKey comes from "c".
    salted = hashlib.pbkdf2_hmac("sha256", b"c", stored.salt, stored.iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    assert hashlib.sha256(client_key).digest() == stored.stored_key
    assert scramkeys.scram_hash("SCRAM-SHA-1") == "sha1"
    assert run(users, lambda auth: auth.scram_credentials("carol", "SCRAM-SHA-1")) is None


def test_bearer_token_for_users_in_the_table(users: str, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    pem = tmp_path / "idp.pem"
    pem.write_bytes(
        signing_key(0)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    verifier = BearerVerifier(OAuthConfig(ISSUER, AUDIENCE, public_key=pem))
    edit(users, lambda db: pgusers.add_user(db, "alice@example.org", "x", "PLAIN"))
    result = run(users, lambda auth: auth.verify_bearer(None, token()), oauth=verifier)
    assert result == AuthResult(AuthOutcome.OK, "alice@example.org")
    stranger = token(email="carol@example.org")
    assert run(users, lambda auth: auth.verify_bearer(None, stranger), oauth=verifier) == INVALID


def test_canonical_user_and_settings(
    pg_server: PostgresServer, users: str, pg_database: str
) -> None:
    name = unicodedata.normalize("NFD", "jörg")
    assert run(users, lambda auth: auth.canonical_user(name)) == "jörg"
    assert run(users, lambda auth: auth.canonical_user("nobody")) is None
    assert run(users, lambda auth: auth.user_settings("alice")) == UserSettings()
    pg_server.sql("UPDATE users SET expire_days = 0 WHERE name = 'alice'", database=pg_database)
    assert run(users, lambda auth: auth.user_settings("alice")) == UserSettings(expire_days=0)


def test_unreachable_database_is_a_temporary_failure(
    pg_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A port nothing listens on: connection refused, at once.
    url = f"postgresql://popbox:{PASSWORD}@127.0.0.1:1/popbox"

    async def attempts(auth: PgUsersAuthenticator) -> None:
        assert await auth.verify_password("alice", "secret") == TEMPORARY
        # Within the backoff pause: refused at once, without touching the network.
        assert await auth.verify_apop("alice", "<1@x>", "0" * 32) == TEMPORARY
        assert await auth.scram_credentials("alice", "SCRAM-SHA-256") is None
        assert await auth.user_settings("alice") == UserSettings()
        with pytest.raises(OSError, match=r"postgresql://popbox:\*\*\*@127\.0\.0\.1:1/popbox"):
            await auth.canonical_user("alice")

    with caplog.at_level(logging.INFO, logger="popbox"):
        run(url, attempts)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "database postgresql://popbox:***@127.0.0.1:1/popbox unreachable: " in text
    assert "next attempt in" in text
    assert PASSWORD not in text
