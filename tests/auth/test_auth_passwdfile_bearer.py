"""Bearer-token logins (OAUTHBEARER, XOAUTH2) through PasswdFileAuthenticator.

The token's username claim names the user, who must be listed in the passwd-file (with
any password field, or none): the file stays the one list of maildrop owners.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from popbox.auth.base import AuthOutcome, AuthResult
from popbox.auth.oauth import BearerVerifier, OAuthConfig
from popbox.auth.passwdfile import PasswdFileAuthenticator

ISSUER = "https://idp.example.org/"
AUDIENCE = "pop.example.org"
USER = "alice@example.org"
OK = AuthResult(AuthOutcome.OK, USER)
INVALID = AuthResult(AuthOutcome.INVALID_CREDENTIALS)


@functools.cache
def signing_key(index: int) -> ec.EllipticCurvePrivateKey:
    del index  # a distinct cached key per index
    return ec.generate_private_key(ec.SECP256R1())


def token(key_index: int = 0, **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "email": USER, "exp": now + 600, **overrides}
    payload = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(payload, signing_key(key_index), algorithm="ES256")


@pytest.fixture
def verifier(tmp_path: Path) -> BearerVerifier:
    pem = tmp_path / "idp.pem"
    public = signing_key(0).public_key()
    pem.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return BearerVerifier(OAuthConfig(ISSUER, AUDIENCE, public_key=pem))


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(f"{USER}\nbob@example.org:{{PLAIN}}x\n", encoding="utf-8")
    return path


def login(path: Path, verifier: BearerVerifier | None, user: str | None, bearer: str) -> AuthResult:
    return asyncio.run(PasswdFileAuthenticator(path, oauth=verifier).verify_bearer(user, bearer))


@pytest.mark.parametrize(
    "named",
    [None, "", USER, "\uff41\uff4c\uff49\uff43\uff45@example.org"],  # fullwidth: width-mapped
)
def test_bearer_login(users: Path, verifier: BearerVerifier, named: str | None) -> None:
    # alice has no password field: she logs in by token only.
    assert login(users, verifier, named, token()) == OK


@pytest.mark.parametrize(
    ("named", "bearer"),
    [
        (None, token(email="carol@example.org")),  # valid, but not in the passwd-file
        ("bob@example.org", token()),  # names another user than the token
        (None, token(exp=1)),
        (None, token(email="a b")),  # a claim that is no user name
        (None, token(key_index=1)),  # signed by someone else
        (None, "0" * 64),
    ],
)
def test_bearer_login_refused(
    users: Path, verifier: BearerVerifier, named: str | None, bearer: str
) -> None:
    assert login(users, verifier, named, bearer) == INVALID


def test_not_configured(users: Path) -> None:
    assert login(users, None, None, token()) == INVALID


def test_unreadable_file_is_a_temporary_failure(tmp_path: Path, verifier: BearerVerifier) -> None:
    result = login(tmp_path / "missing", verifier, None, token())
    assert result == AuthResult(AuthOutcome.TEMPORARY_FAILURE)


def test_token_never_logged(
    users: Path, verifier: BearerVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    bearers = [token(key_index=1), token(email="carol@example.org"), token(exp=1)]
    with caplog.at_level(logging.DEBUG, logger="popbox"):
        for bearer in bearers:
            assert login(users, verifier, None, bearer) == INVALID
    ours = [record for record in caplog.records if record.name.startswith("popbox.")]
    assert [record.getMessage() for record in ours] == [
        "bearer token refused: bad_signature",
        f"bearer token refused: carol@example.org is not in passwd-file {users}",
        "bearer token refused: expired",
    ]
    for bearer in bearers:
        assert all(bearer.split(".")[2] not in record.getMessage() for record in ours)
