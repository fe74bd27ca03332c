"""What the challenge-response SASL mechanisms need from a stored `{SCHEME}secret`.

Any user database (passwd-file, PostgreSQL) stores Dovecot-style secrets; these functions
turn one into a CRAM-MD5 digest (RFC 2195) or a SCRAM verifier (RFC 5802), as Dovecot's
passdb credentials lookups do. Which secrets can serve which mechanism:

- CRAM-MD5: a PLAIN secret (HMAC-MD5 keyed with it) or a {CRAM-MD5}/{HMAC-MD5} context;
- SCRAM-SHA-1 / SCRAM-SHA-256 (and -PLUS): a stored {SCRAM-SHA-1} / {SCRAM-SHA-256}
  verifier of the same hash, or a PLAIN secret, from which one is derived.

Everything else (crypt, argon2, salted digests) cannot: the result is None.
"""

from __future__ import annotations

import hashlib
import hmac

from popbox.auth import schemes, scramkeys
from popbox.auth.crammd5 import hmac_md5_with_context
from popbox.auth.precis import normalize_password
from popbox.sasl.base import ScramCredentials

__all__ = ["cram_md5_digest", "dummy_scram_work", "scram_credentials", "scram_salt"]

_CRAM_SCHEMES = frozenset({"CRAM-MD5", "HMAC-MD5"})


def cram_md5_digest(stored: str, challenge: bytes, *, default_scheme: str) -> bytes | None:
    """HMAC-MD5(secret, challenge), or None if the secret cannot make one.

    Raises schemes.SchemeError for a secret its scheme cannot read.
    """
    name, raw = schemes.decode_secret(stored, default_scheme=default_scheme)
    if name in schemes.PLAIN_SCHEMES:
        # As typed by the client, like APOP: RFC 2195 knows no normalisation.
        return hmac.digest(raw, challenge, "md5")
    if name in _CRAM_SCHEMES:
        return hmac_md5_with_context(raw, challenge)  # decode_secret checked the length
    return None


def scram_salt(key: bytes, user: str) -> bytes:
    """A per-user salt for verifiers derived from PLAIN secrets, the same on every login.

    RFC 5802 section 9: the salt must not change between logins, or clients cannot cache
    SaltedPassword; keyed with a server secret, so it says nothing about the password.
    """
    digest = hmac.digest(key, user.encode("utf-8", "surrogateescape"), "sha256")
    return digest[: scramkeys.SALT_OCTETS]


def scram_credentials(
    stored: str, mechanism: str, salt: bytes, *, default_scheme: str
) -> ScramCredentials | None:
    """The verifier for `mechanism` (e.g. "SCRAM-SHA-256-PLUS"), or None if there is none.

    `salt` is used only to derive from a PLAIN secret (scram_salt()); that costs a PBKDF2
    of DEFAULT_ITERATIONS, so call this off the event loop. Raises ValueError for a
    mechanism that is not SCRAM-SHA-1/256 and schemes.SchemeError for an unreadable secret.
    """
    scheme = mechanism.upper().removesuffix("-PLUS")
    hash_name = scramkeys.scram_hash(scheme)
    name, raw = schemes.decode_secret(stored, default_scheme=default_scheme)
    if name == scheme:
        try:
            return scramkeys.parse_verifier(hash_name, raw)
        except scramkeys.ScramVerifierError as exc:
            raise schemes.MalformedSecret(str(exc)) from None
    if name not in schemes.PLAIN_SCHEMES:
        return None
    return scramkeys.derive_credentials(
        hash_name, _scram_password(raw), salt, scramkeys.DEFAULT_ITERATIONS
    )


def _scram_password(raw: bytes) -> bytes:
    """The password octets a SCRAM client puts into PBKDF2 (RFC 5802 section 2.2, Hi()).

    Clients prepare the password (SASLprep, now RFC 8265 OpaqueString; RFC 7677), so the
    verifier is derived from the prepared form; a secret that is not valid PRECIS text
    (non-UTF-8 octets, controls) is used as stored, as clients that skip preparation do.
    """
    try:
        return normalize_password(raw.decode("utf-8")).encode("utf-8")
    except ValueError:  # UnicodeDecodeError included
        return raw


def dummy_scram_work(mechanism: str) -> None:
    """A derivation's worth of CPU, for users without a verifier (keeps timing level)."""
    hashlib.pbkdf2_hmac(
        scramkeys.scram_hash(mechanism), b"", b"\0" * 16, scramkeys.DEFAULT_ITERATIONS
    )
