"""OAuth bearer tokens (RFC 7628, RFC 6750): JWT verification with PyJWT.

Keys are generated per run with cryptography and tokens signed with PyJWT, the same
library an identity provider written in Python would use.
"""

from __future__ import annotations

import base64
import functools
import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from popbox.auth.oauth import BearerResult, BearerVerifier, OAuthConfig

ISSUER = "https://idp.example.org/"
AUDIENCE = "pop.example.org"
USER = "alice@example.org"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@functools.cache
def rsa_key(index: int = 0) -> rsa.RSAPrivateKey:
    del index  # a distinct cached key per index
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def jwk(key: PrivateKey, kid: str, **extra: str) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        data = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**data, "kid": kid, **extra}


def write_jwks(path: Path, *keys: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"keys": list(keys)}))
    return path


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "1234",
        "email": USER,
        "iat": now - 10,
        "exp": now + 600,
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def token(key: PrivateKey, alg: str = "RS256", kid: str | None = "rsa", **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


@pytest.fixture
def jwks(tmp_path: Path) -> Path:
    return write_jwks(
        tmp_path / "jwks.json",
        jwk(rsa_key(), "rsa"),
        jwk(ec_key(), "ec"),
        jwk(ed_key(), "ed"),
        jwk(rsa_key(1), "rsa-enc", use="enc"),
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "nonsense", "kid": "junk"},
    )


@pytest.fixture
def verifier(jwks: Path) -> BearerVerifier:
    return BearerVerifier(OAuthConfig(ISSUER, AUDIENCE, jwks_file=jwks))


def error(verifier: BearerVerifier, bearer: str, user: str | None = None) -> str | None:
    result = verifier.verify(bearer, user)
    assert result.ok is (result.error is None)
    return result.error


# --- valid tokens -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [
        (rsa_key(), "RS256", "rsa"),
        (rsa_key(), "PS256", "rsa"),
        (ec_key(), "ES256", "ec"),
        (ed_key(), "EdDSA", "ed"),
    ],
)
def test_valid_token(verifier: BearerVerifier, key: PrivateKey, alg: str, kid: str) -> None:
    assert verifier.verify(token(key, alg, kid)) == BearerResult(ok=True, user=USER)
    assert verifier.verify(token(key, alg, kid), USER) == BearerResult(ok=True, user=USER)


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": [AUDIENCE, "other"]},
        {"iat": None},
        {"nbf": int(time.time()) - 5},
        {"email": "\u00e9mile@example.org"},
    ],
)
def test_valid_variants(verifier: BearerVerifier, overrides: dict[str, Any]) -> None:
    assert verifier.verify(token(rsa_key(), **overrides)).ok


def test_other_username_claim(jwks: Path) -> None:
    config = OAuthConfig(ISSUER, AUDIENCE, username_claim="preferred_username", jwks_file=jwks)
    bearer = token(rsa_key(), preferred_username="alice")
    assert BearerVerifier(config).verify(bearer) == BearerResult(ok=True, user="alice")


def test_named_user_compared_after_rfc8265_preparation(verifier: BearerVerifier) -> None:
    # Fullwidth forms map to ASCII (width mapping); e + U+0301 is U+00E9 after NFC.
    assert verifier.verify(token(rsa_key()), "\uff41\uff4c\uff49\uff43\uff45@example.org").ok
    bearer = token(rsa_key(), email="\u00e9mile@example.org")
    assert verifier.verify(bearer, "e\u0301mile@example.org").ok
    assert verifier.verify(token(rsa_key()), "").ok  # empty authzid: none named


def test_pem_public_key(tmp_path: Path) -> None:
    pem = tmp_path / "idp.pem"
    pem.write_bytes(
        ed_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    verifier = BearerVerifier(OAuthConfig(ISSUER, AUDIENCE, public_key=pem))
    assert verifier.verify(token(ed_key(), "EdDSA", kid=None)).ok
    assert verifier.verify(token(ed_key(), "EdDSA", kid="anything")).ok
    assert error(verifier, token(rsa_key(), "RS256", kid=None)) == "invalid_algorithm"
    other = ed25519.Ed25519PrivateKey.generate()
    assert error(verifier, token(other, "EdDSA")) == "bad_signature"


def test_single_key_jwks_needs_no_kid(tmp_path: Path) -> None:
    path = write_jwks(tmp_path / "one.json", jwk(rsa_key(), "only"))
    verifier = BearerVerifier(OAuthConfig(ISSUER, AUDIENCE, jwks_file=path))
    assert verifier.verify(token(rsa_key(), kid=None)).ok


def test_leeway(jwks: Path) -> None:
    config = OAuthConfig(ISSUER, AUDIENCE, jwks_file=jwks, leeway=30)
    bearer = token(rsa_key(), exp=int(time.time()) - 10)
    assert BearerVerifier(config).verify(bearer).ok


# --- refused tokens -----------------------------------------------------------------


def forge(header: dict[str, Any], payload: dict[str, Any], sign: bytes | None = None) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    signature = b"" if sign is None else hmac.new(sign, signing_input.encode(), "sha256").digest()
    return signing_input + "." + b64(signature)


def rsa_pem() -> bytes:
    public = rsa_key().public_key()
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


NOW = int(time.time())
REFUSED: list[tuple[str, Callable[[], str], str]] = [
    ("expired", lambda: token(rsa_key(), exp=NOW - 60), "expired"),
    ("nbf ahead", lambda: token(rsa_key(), nbf=NOW + 600), "not_yet_valid"),
    ("iat ahead", lambda: token(rsa_key(), iat=NOW + 600), "not_yet_valid"),
    ("wrong issuer", lambda: token(rsa_key(), iss="https://evil.example/"), "invalid_issuer"),
    ("wrong audience", lambda: token(rsa_key(), aud="imap.example.org"), "invalid_audience"),
    ("no audience", lambda: token(rsa_key(), aud=None), "missing_claim"),
    ("no exp", lambda: token(rsa_key(), exp=None), "missing_claim"),
    ("no issuer", lambda: token(rsa_key(), iss=None), "missing_claim"),
    ("no username claim", lambda: token(rsa_key(), email=None), "missing_claim"),
    ("list username claim", lambda: token(rsa_key(), email=[USER]), "missing_claim"),
    ("empty username claim", lambda: token(rsa_key(), email=""), "missing_claim"),
    ("bad signature", lambda: token(rsa_key(1), kid="rsa"), "bad_signature"),
    ("tampered payload", lambda: tamper(token(rsa_key())), "bad_signature"),
    ("unknown kid", lambda: token(rsa_key(), kid="rotated-away"), "unknown_key"),
    ("no kid, several keys", lambda: token(rsa_key(), kid=None), "unknown_key"),
    ("encryption key", lambda: token(rsa_key(1), kid="rsa-enc"), "unknown_key"),
    ("alg none", lambda: forge({"alg": "none", "kid": "rsa"}, claims()), "invalid_algorithm"),
    (
        "HS256 keyed with the public key",
        lambda: forge({"alg": "HS256", "kid": "rsa"}, claims(), rsa_pem()),
        "invalid_algorithm",
    ),
    (
        "HS256 with an oct key",
        lambda: forge({"alg": "HS256", "kid": "hmac"}, claims(), b"secret"),
        "unknown_key",
    ),
    ("ES256 on an RSA key", lambda: token(ec_key(), "ES256", kid="rsa"), "invalid_algorithm"),
    ("not a JWT", lambda: "not-a-jwt", "invalid_token"),
    ("garbage segments", lambda: "a.b.c", "invalid_token"),
    ("too long", lambda: token(rsa_key(), padding="x" * 20_000), "invalid_token"),
]


@pytest.mark.parametrize(
    ("bearer", "expected"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_refused(verifier: BearerVerifier, bearer: Callable[[], str], expected: str) -> None:
    assert verifier.verify(bearer()) == BearerResult(ok=False, error=expected)


def tamper(bearer: str) -> str:
    header, payload, signature = bearer.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["email"] = "mallory@example.org"
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


@pytest.mark.parametrize("named", ["bob@example.org", "Alice@example.org", "alice"])
def test_user_mismatch(verifier: BearerVerifier, named: str) -> None:
    assert error(verifier, token(rsa_key()), named) == "user_mismatch"


def test_jwks_alg_member_restricts_the_algorithm(tmp_path: Path) -> None:
    path = write_jwks(tmp_path / "jwks.json", jwk(rsa_key(), "rsa", alg="RS256"))
    verifier = BearerVerifier(OAuthConfig(ISSUER, AUDIENCE, jwks_file=path))
    assert verifier.verify(token(rsa_key(), "RS256")).ok
    assert error(verifier, token(rsa_key(), "PS256")) == "invalid_algorithm"


# --- the error JSON (RFC 7628 section 3.2.2) ----------------------------------------


def test_status_json(jwks: Path) -> None:
    bare = BearerVerifier(OAuthConfig(ISSUER, AUDIENCE, jwks_file=jwks))
    assert bare.verify("x").status_json() == b'{"status":"invalid_token"}'
    config = OAuthConfig(
        ISSUER,
        AUDIENCE,
        jwks_file=jwks,
        scope="email",
        openid_configuration="https://idp.example.org/.well-known/openid-configuration",
    )
    # Expired is invalid_token on the wire too (RFC 6750 section 3.1).
    result = BearerVerifier(config).verify(token(rsa_key(), exp=int(time.time()) - 60))
    assert result.error == "expired"
    assert result.status_json() == (
        b'{"status":"invalid_token","scope":"email","openid-configuration":'
        b'"https://idp.example.org/.well-known/openid-configuration"}'
    )


def test_success_has_no_status_json() -> None:
    with pytest.raises(ValueError, match="a successful bearer result has no error status"):
        BearerResult(ok=True, user=USER).status_json()


# --- configuration and key files ----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of jwks_file and public_key must be set"),
        (
            {"jwks_file": Path("a"), "public_key": Path("b")},
            "exactly one of jwks_file and public_key must be set",
        ),
        ({"jwks_file": Path("a"), "issuer": ""}, "issuer must not be empty"),
        ({"jwks_file": Path("a"), "username_claim": ""}, "username_claim must not be empty"),
        ({"jwks_file": Path("a"), "leeway": -1.0}, "leeway must not be negative"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, **kwargs}
    with pytest.raises(ValueError) as excinfo:
        OAuthConfig(**arguments)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"keys": []}', b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'],
)
def test_unusable_jwks_fails_at_startup(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"jwks\.json: cannot load keys: "):
        BearerVerifier(OAuthConfig(ISSUER, AUDIENCE, jwks_file=path))


def test_missing_key_file_fails_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing\.pem: cannot load keys: "):
        BearerVerifier(OAuthConfig(ISSUER, AUDIENCE, public_key=tmp_path / "missing.pem"))


def test_jwks_reloaded_on_change(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_jwks(tmp_path / "jwks.json", jwk(rsa_key(), "old"))
    verifier = BearerVerifier(OAuthConfig(ISSUER, AUDIENCE, jwks_file=path))
    assert verifier.verify(token(rsa_key(), kid="old")).ok
    write_jwks(path, jwk(rsa_key(1), "new"))
    bump_mtime(path)
    assert verifier.verify(token(rsa_key(1), kid="new")).ok
    assert error(verifier, token(rsa_key(), kid="old")) == "unknown_key"
    # A broken rewrite keeps the keys that worked, loudly.
    path.write_text("{broken")
    bump_mtime(path)
    with caplog.at_level(logging.ERROR, logger="popbox.auth.oauth"):
        assert verifier.verify(token(rsa_key(1), kid="new")).ok
    assert "cannot reload keys, keeping the previous ones" in caplog.text


def bump_mtime(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
