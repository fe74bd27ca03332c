"""OAuth 2.0 bearer tokens (RFC 6750) for OAUTHBEARER (RFC 7628) and XOAUTH2, via PyJWT.

Tokens are JWTs (RFC 7519) verified offline against the identity provider's public keys: a
JWKS file (RFC 7517 section 5, as served at the provider's `jwks_uri`; refreshed by whatever
fetches it, and re-read here when it changes) or one PEM public key or certificate.

Checked: the signature with RS256, PS256, ES256 or EdDSA only (never `none` or HMAC, and
only the algorithms that fit the key's type, against algorithm confusion); `exp` (required),
`nbf` and `iat` when present; `iss` equal to the configured issuer; `aud` containing the
configured audience; the username claim present and a string; and, if the client named a
user (OAUTHBEARER authzid, XOAUTH2 `user=`), that it is the claim's user (RFC 8265
UsernameCasePreserved forms compared).

The token is a password: it is never logged, stored or put in a repr.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from popbox.auth.precis import normalize_username
from popbox.auth.usernames import InvalidUsername

__all__ = ["ALGORITHMS", "MAX_TOKEN_OCTETS", "BearerResult", "BearerVerifier", "OAuthConfig"]

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
# Provider access tokens run to a few KiB (Entra ID ~2-4 KiB); RFC 5034's AUTH line limit
# is the server's business, this only keeps absurd input away from the JSON/base64 parsers.
MAX_TOKEN_OCTETS = 16 * 1024
# RFC 6750 section 3.1: every failure of the token itself (expired, bad signature, wrong
# audience, ...) is `invalid_token` on the wire; BearerResult.error keeps the detail for logs.
_WIRE_STATUS = "invalid_token"
_REQUIRED_CLAIMS = ["exp", "iss", "aud"]

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    issuer: str
    audience: str
    username_claim: str = "email"
    jwks_file: Path | None = None
    public_key: Path | None = None
    # Optional members of the RFC 7628 section 3.2.2 error JSON.
    scope: str | None = None
    openid_configuration: str | None = None
    # Seconds of clock skew allowed for exp/nbf/iat (RFC 7519 section 4.1.4 "small leeway").
    leeway: float = 0.0

    def __post_init__(self) -> None:
        if (self.jwks_file is None) == (self.public_key is None):
            raise ValueError("exactly one of jwks_file and public_key must be set")
        for name in ("issuer", "audience", "username_claim"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        if self.leeway < 0:
            raise ValueError("leeway must not be negative")


@dataclass(frozen=True, slots=True)
class BearerResult:
    ok: bool
    # The username claim's value on success.
    user: str | None = None
    # On failure: invalid_token, expired, not_yet_valid, invalid_issuer, invalid_audience,
    # bad_signature, invalid_algorithm, unknown_key, missing_claim or user_mismatch.
    error: str | None = None
    scope: str | None = None
    openid_configuration: str | None = None

    def status_json(self) -> bytes:
        """The RFC 7628 section 3.2.2 error the server sends as its challenge."""
        if self.ok:
            raise ValueError("a successful bearer result has no error status")
        status: dict[str, str] = {"status": _WIRE_STATUS}
        if self.scope is not None:
            status["scope"] = self.scope
        if self.openid_configuration is not None:
            status["openid-configuration"] = self.openid_configuration
        return json.dumps(status, separators=(",", ":")).encode("ascii")


@dataclass(frozen=True, slots=True)
class _Key:
    key: PublicKey = field(repr=False)
    kid: str | None
    algorithms: tuple[str, ...]


def _algorithms_for(key: object) -> tuple[str, ...]:
    """The algorithms this key type may verify (RFC 7518 section 3.1, RFC 8037)."""
    if isinstance(key, rsa.RSAPublicKey):
        return ("RS256", "PS256")
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return ("ES256",)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    return ()


def _load_pem(data: bytes) -> list[_Key]:
    if b"-----BEGIN CERTIFICATE-----" in data:
        key: object = x509.load_pem_x509_certificate(data).public_key()
    else:
        key = serialization.load_pem_public_key(data)
    algorithms = _algorithms_for(key)
    if not algorithms or not isinstance(key, PublicKey):
        raise ValueError("the PEM key is not an RSA, P-256 or Ed25519/Ed448 public key")
    return [_Key(key, None, algorithms)]


def _load_jwks(data: bytes) -> list[_Key]:
    document = json.loads(data)
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError('a JWKS is a JSON object with a "keys" array')
    keys = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue  # RFC 7517 section 4.2: "enc" keys do not verify signatures
        try:
            jwk = jwt.PyJWK(entry)
        except jwt.PyJWTError as exc:
            # The class only: PyJWT's messages can quote the JWK, private members included.
            log.warning("JWKS key %d skipped: %s", index, type(exc).__name__)
            continue
        algorithms = _algorithms_for(jwk.key)
        if "alg" in entry:  # RFC 7517 section 4.4: the key is for that algorithm only
            algorithms = tuple(alg for alg in algorithms if alg == entry["alg"])
        if algorithms and isinstance(jwk.key, PublicKey):
            keys.append(_Key(jwk.key, jwk.key_id, algorithms))
        else:
            log.warning(
                "JWKS key %d skipped: not a public key for %s", index, ", ".join(ALGORITHMS)
            )
    if not keys:
        raise ValueError("the JWKS has no usable signature keys")
    return keys


class _KeySource:
    """The keys of one file, re-read when the file changes (key rotation)."""

    def __init__(self, path: Path, jwks: bool) -> None:
        self.path = path
        self.jwks = jwks
        self._stamp: tuple[int, ...] | None = None
        self._keys: list[_Key] = []
        self.keys()  # a broken file is a configuration error: fail at startup

    def keys(self) -> list[_Key]:
        try:
            st = os.stat(self.path)
            stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp != self._stamp:
                data = self.path.read_bytes()
                self._keys = _load_jwks(data) if self.jwks else _load_pem(data)
                self._stamp = stamp
        except (OSError, ValueError) as exc:
            if self._stamp is None:
                raise ValueError(f"{self.path}: cannot load keys: {exc}") from exc
            log.error("%s: cannot reload keys, keeping the previous ones: %s", self.path, exc)
        return self._keys


class BearerVerifier:
    """Verifies bearer tokens against one issuer's keys."""

    def __init__(self, config: OAuthConfig) -> None:
        self.config = config
        path = config.jwks_file or config.public_key
        if path is None:  # OAuthConfig.__post_init__ already refuses this
            raise ValueError("no key file configured")
        self._source = _KeySource(path, jwks=config.jwks_file is not None)

    def verify(self, token: str, user: str | None = None) -> BearerResult:
        """Check `token`; `user` is the user the client named, if any ("" counts as none)."""
        if len(token) > MAX_TOKEN_OCTETS:
            return self._failure("invalid_token")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return self._failure("invalid_token")
        key = self._select(kid)
        if key is None:
            return self._failure("unknown_key")
        try:
            claims = self._decode(token, key)
        except jwt.PyJWTError as exc:
            return self._failure(_error_code(exc))
        claimed = claims.get(self.config.username_claim)
        if not isinstance(claimed, str) or not claimed:
            return self._failure("missing_claim")
        if user and not _same_user(user, claimed):
            return self._failure("user_mismatch")
        return BearerResult(ok=True, user=claimed)

    def _select(self, kid: object) -> _Key | None:
        keys = self._source.keys()
        if not self._source.jwks:
            return keys[0]  # one PEM key: whatever the token's kid says
        if kid is None:
            return keys[0] if len(keys) == 1 else None
        return next((key for key in keys if key.kid == kid), None)

    def _decode(self, token: str, key: _Key) -> dict[str, Any]:
        return jwt.decode(
            token,
            key.key,
            algorithms=list(key.algorithms),
            audience=self.config.audience,
            issuer=self.config.issuer,
            leeway=self.config.leeway,
            options={"require": _REQUIRED_CLAIMS},
        )

    def _failure(self, error: str) -> BearerResult:
        return BearerResult(
            ok=False,
            error=error,
            scope=self.config.scope,
            openid_configuration=self.config.openid_configuration,
        )


# Most specific first: ExpiredSignatureError is an InvalidTokenError, and so on.
_ERROR_CODES: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidIssuerError, "invalid_issuer"),
    (jwt.InvalidAudienceError, "invalid_audience"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "invalid_algorithm"),
)


def _error_code(exc: jwt.PyJWTError) -> str:
    return next((code for kind, code in _ERROR_CODES if isinstance(exc, kind)), "invalid_token")


def _same_user(named: str, claimed: str) -> bool:
    try:
        return normalize_username(named) == normalize_username(claimed)
    except InvalidUsername:
        return named == claimed
