"""SCRAM verifiers (RFC 5802 section 3) and Dovecot's stored form of them.

Dovecot's `{SCRAM-SHA-1}` and `{SCRAM-SHA-256}` secrets (password-scheme-scram.c) are the
text `iterations,base64(salt),base64(StoredKey),base64(ServerKey)`; the iteration count must
lie in 4096..INT_MAX (scram_scheme_parse) and `doveadm pw` writes 4096 iterations and a
16-octet random salt (scram_generate). Like Dovecot, the password octets go into PBKDF2 as
given: normalisation (RFC 8265 OpaqueString, the successor of SASLprep) is the caller's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re

from popbox.sasl.base import ScramCredentials

__all__ = [
    "DEFAULT_ITERATIONS",
    "MAX_ITERATIONS",
    "MIN_ITERATIONS",
    "SALT_OCTETS",
    "SCRAM_HASHES",
    "ScramVerifierError",
    "check",
    "derive_credentials",
    "format_verifier",
    "generate_verifier",
    "parse_verifier",
    "scram_hash",
]

# Dovecot scheme (and SASL mechanism) name -> hashlib name.
SCRAM_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}
# RFC 5802 section 5.1 / RFC 7677 section 4: at least 4096 iterations; Dovecot's
# SCRAM_MIN_ITERATE_COUNT and SCRAM_MAX_ITERATE_COUNT (INT_MAX).
MIN_ITERATIONS = 4096
# scramp, which runs the SASL exchange, accepts 4096..10,000,000 iterations and salts of at
# least 12 octets; a verifier outside that is unusable for SCRAM and refused here.
MAX_ITERATIONS = 10_000_000
MIN_SALT_OCTETS = 12
# What `doveadm pw -s SCRAM-SHA-256` writes (SCRAM_DEFAULT_ITERATE_COUNT).
DEFAULT_ITERATIONS = 4096
# scram_generate(): `unsigned char salt[16]`.
SALT_OCTETS = 16

_ITERATIONS = re.compile(rb"[0-9]{1,10}")


class ScramVerifierError(ValueError):
    """A stored SCRAM verifier that cannot be read; the message says which field."""


def scram_hash(mechanism: str) -> str:
    """hashlib name for a SCRAM mechanism or scheme name (`-PLUS` uses the same hash)."""
    name = mechanism.upper().removesuffix("-PLUS")
    try:
        return SCRAM_HASHES[name]
    except KeyError:
        raise ValueError(f"not a supported SCRAM mechanism: {mechanism!r}") from None


def derive_credentials(
    hash_name: str, password: bytes, salt: bytes, iterations: int
) -> ScramCredentials:
    """RFC 5802 section 3: SaltedPassword, then StoredKey and ServerKey."""
    salted = hashlib.pbkdf2_hmac(hash_name, password, salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", hash_name)
    return ScramCredentials(
        salt=salt,
        stored_key=hashlib.new(hash_name, client_key).digest(),
        server_key=hmac.digest(salted, b"Server Key", hash_name),
        iterations=iterations,
    )


def _b64(field: bytes, what: str) -> bytes:
    try:
        return base64.b64decode(field, validate=True)
    except (binascii.Error, ValueError):
        raise ScramVerifierError(f"SCRAM {what} is not valid base64") from None


def parse_verifier(hash_name: str, text: bytes) -> ScramCredentials:
    """Dovecot's `iterations,salt,StoredKey,ServerKey` (scram_scheme_parse)."""
    fields = text.split(b",")
    if len(fields) != 4:
        raise ScramVerifierError("SCRAM secret is not iterations,salt,StoredKey,ServerKey")
    count, salt, stored_key, server_key = fields
    if _ITERATIONS.fullmatch(count) is None or not (MIN_ITERATIONS <= int(count) <= MAX_ITERATIONS):
        raise ScramVerifierError(
            f"SCRAM iteration count must be {MIN_ITERATIONS}..{MAX_ITERATIONS}"
        )
    size = hashlib.new(hash_name).digest_size
    keys = _b64(stored_key, "StoredKey"), _b64(server_key, "ServerKey")
    if any(len(key) != size for key in keys):
        raise ScramVerifierError(f"SCRAM StoredKey and ServerKey must be {size} octets")
    salt_octets = _b64(salt, "salt")
    if len(salt_octets) < MIN_SALT_OCTETS:
        raise ScramVerifierError(f"SCRAM salt must be at least {MIN_SALT_OCTETS} octets")
    return ScramCredentials(salt_octets, keys[0], keys[1], int(count))


def format_verifier(credentials: ScramCredentials) -> bytes:
    """The stored text for `credentials`, as scram_generate() writes it."""
    fields = (credentials.salt, credentials.stored_key, credentials.server_key)
    return b",".join([str(credentials.iterations).encode(), *map(base64.b64encode, fields)])


def generate_verifier(
    hash_name: str, password: bytes, iterations: int = DEFAULT_ITERATIONS
) -> bytes:
    """A new stored verifier with a random salt."""
    salt = os.urandom(SALT_OCTETS)
    return format_verifier(derive_credentials(hash_name, password, salt, iterations))


def check(hash_name: str, password: bytes, text: bytes) -> bool:
    """scram_verify(): recompute StoredKey from the password, compare in constant time."""
    stored = parse_verifier(hash_name, text)
    computed = derive_credentials(hash_name, password, stored.salt, stored.iterations)
    return hmac.compare_digest(computed.stored_key, stored.stored_key)
