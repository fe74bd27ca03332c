"""Dovecot password schemes: stored secrets of the form `{SCHEME}secret`.

Follows Dovecot 2.3's src/auth/password-scheme.c and the "Password Schemes" page
(https://doc.dovecot.org/2.3/configuration_manual/authentication/password_schemes/):

- the scheme name is case-insensitive and may carry an encoding suffix `.B64`, `.BASE64`
  or `.HEX` (password_scheme_lookup); an unknown suffix is an unknown scheme;
- a secret without a `{SCHEME}` prefix uses the passdb's default scheme, CRYPT for a
  passwd-file (password_get_scheme);
- fixed-length digests without an explicit suffix are hex when the text is twice the raw
  length, else base64 (password_decode);
- every crypt(3) scheme (CRYPT, DES-CRYPT, MD5-CRYPT, SHA256-CRYPT, SHA512-CRYPT,
  BLF-CRYPT) verifies any crypt string, dispatching on its `$id$` (crypt_verify).

Compatibility is checked against hashes from `doveadm pw` of Dovecot 2.3.19.1 (Debian 12
dovecot-core 1:2.3.19.1+dfsg1-2.1+deb12u7); see tests/auth/test_auth_schemes.py.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import hmac
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import bcrypt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from passlib.hash import (  # type: ignore[import-untyped]
    des_crypt,
    md5_crypt,
    sha256_crypt,
    sha512_crypt,
)

from popbox.auth import scramkeys
from popbox.auth.crammd5 import CRAM_MD5_CONTEXT_OCTETS, cram_md5_context

__all__ = [
    "DEFAULT_SCHEME",
    "PLAIN_SCHEMES",
    "SUPPORTED_SCHEMES",
    "MalformedSecret",
    "SchemeError",
    "UnknownScheme",
    "decode_secret",
    "hash_password",
    "is_fast",
    "plain_secret",
    "verify",
]

DEFAULT_SCHEME = "ARGON2ID"

# Dovecot's ARGON2 schemes come from libsodium, whose crypto_pwhash_str_verify() accepts
# parallelism 1 only; these are the costs `doveadm pw -s ARGON2ID` writes (m=64 MiB, t=3).
_ARGON2_MEMORY_KIB = 65536
_ARGON2_TIME_COST = 3
_ARGON2_PARALLELISM = 1
# bcrypt: cost 12 (2**12 rounds); Dovecot's own default is 5, too cheap for today.
# libxcrypt and the bcrypt library read at most 72 octets of the password.
_BCRYPT_COST = 12
_BCRYPT_MAX_OCTETS = 72
# SHA-crypt: 5000 rounds is what glibc/libxcrypt and Dovecot write by default (no
# `rounds=` field), which keeps our hashes readable by every crypt(3).
_SHA_CRYPT_ROUNDS = 5000
# Salted SHA/MD5 schemes: Dovecot writes a 4-octet salt (ssha_generate); it reads any
# salt length after the digest.
_SALT_OCTETS = 4

_DES_CRYPT = re.compile(r"[./0-9A-Za-z]{13}")
_CRYPT_ID = re.compile(r"\$([^$]*)\$")


class SchemeError(ValueError):
    """A stored secret that cannot be used: unknown scheme or malformed data."""


class UnknownScheme(SchemeError):
    """The `{SCHEME}` (or crypt `$id$`) is not one we support."""


class MalformedSecret(SchemeError):
    """The scheme is known but the secret is not valid for it (bad base64, bad length)."""


class _Encoding(enum.Enum):
    NONE = "none"
    BASE64 = "base64"
    HEX = "hex"


_SUFFIXES = {"B64": _Encoding.BASE64, "BASE64": _Encoding.BASE64, "HEX": _Encoding.HEX}


@dataclass(frozen=True, slots=True)
class _Scheme:
    encoding: _Encoding
    # Expected raw length in octets; 0 means variable (Dovecot's raw_password_len).
    raw_len: int
    generate: Callable[[bytes], bytes]
    # None: Dovecot's generic handler, generate from the password and compare.
    check: Callable[[bytes, bytes], bool] | None = None


def _equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison that does not reveal the length either."""
    return hmac.compare_digest(hashlib.sha256(a).digest(), hashlib.sha256(b).digest())


# --- crypt(3) family --------------------------------------------------------------


def _bcrypt_verify(password: bytes, stored: bytes) -> bool:
    try:
        return bcrypt.checkpw(password[:_BCRYPT_MAX_OCTETS], stored)
    except ValueError as exc:
        raise MalformedSecret(f"malformed bcrypt hash: {exc}") from None


def _crypt_verify(password: bytes, raw: bytes) -> bool:
    """Verify against any crypt(3) string, as Dovecot's crypt_verify() does."""
    if not raw:
        return False  # crypt_verify(): an empty hash never matches
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedSecret("crypt hash is not ASCII") from None
    handler: object
    match = _CRYPT_ID.match(text)
    if match is None:
        if _DES_CRYPT.fullmatch(text) is None:
            raise MalformedSecret("not a recognised crypt(3) hash")
        handler = des_crypt
    elif match.group(1) in ("2a", "2b", "2y"):
        return _bcrypt_verify(password, raw)
    else:
        handler = {"1": md5_crypt, "5": sha256_crypt, "6": sha512_crypt}.get(match.group(1))
        if handler is None:
            raise UnknownScheme(f"unsupported crypt(3) method ${match.group(1)}$")
    try:
        return bool(handler.verify(password, text))  # type: ignore[attr-defined]
    except ValueError as exc:
        raise MalformedSecret(f"malformed crypt hash: {exc}") from None


def _bcrypt_generate(password: bytes) -> bytes:
    # $2b$ is what the bcrypt library writes; libxcrypt reads it like Dovecot's $2y$.
    return bcrypt.hashpw(password[:_BCRYPT_MAX_OCTETS], bcrypt.gensalt(_BCRYPT_COST))


def _passlib_generate(handler: object) -> Callable[[bytes], bytes]:
    def generate(password: bytes) -> bytes:
        return str(handler.hash(password)).encode("ascii")  # type: ignore[attr-defined]

    return generate


_sha512_crypt_generate = _passlib_generate(sha512_crypt.using(rounds=_SHA_CRYPT_ROUNDS))
_sha256_crypt_generate = _passlib_generate(sha256_crypt.using(rounds=_SHA_CRYPT_ROUNDS))


def _crypt(generate: Callable[[bytes], bytes]) -> _Scheme:
    return _Scheme(_Encoding.NONE, 0, generate, _crypt_verify)


# --- ARGON2 (Dovecot: password-scheme-sodium.c) -------------------------------------


def _argon2_hasher(kind: Type) -> PasswordHasher:
    return PasswordHasher(
        time_cost=_ARGON2_TIME_COST,
        memory_cost=_ARGON2_MEMORY_KIB,
        parallelism=_ARGON2_PARALLELISM,
        hash_len=32,
        salt_len=16,
        type=kind,
    )


_ARGON2I = _argon2_hasher(Type.I)
_ARGON2ID = _argon2_hasher(Type.ID)


def _argon2_verify(password: bytes, raw: bytes) -> bool:
    # argon2-cffi reads the variant from the hash itself, like crypto_pwhash_str_verify.
    try:
        return _ARGON2ID.verify(raw.decode("ascii", "replace"), password)
    except VerifyMismatchError:
        return False
    except (VerificationError, InvalidHashError):
        raise MalformedSecret("malformed argon2 hash") from None


def _argon2(hasher: PasswordHasher) -> _Scheme:
    def generate(password: bytes) -> bytes:
        return hasher.hash(password).encode("ascii")

    return _Scheme(_Encoding.NONE, 0, generate, _argon2_verify)


# --- plain and salted/unsalted digests ---------------------------------------------


def _digest(name: str) -> Callable[[bytes], bytes]:
    def generate(password: bytes) -> bytes:
        return hashlib.new(name, password).digest()

    return generate


def _salted(name: str) -> _Scheme:
    """SSHA/SSHA256/SSHA512/SMD5: base64(digest(password + salt) + salt)."""
    size = hashlib.new(name).digest_size

    def generate(password: bytes) -> bytes:
        salt = os.urandom(_SALT_OCTETS)
        return hashlib.new(name, password + salt).digest() + salt

    def check(password: bytes, raw: bytes) -> bool:
        if len(raw) <= size:
            raise MalformedSecret(f"salted {name} secret is too short")
        expected = hashlib.new(name, password + raw[size:]).digest()
        return hmac.compare_digest(expected, raw[:size])

    return _Scheme(_Encoding.BASE64, 0, generate, check)


def _plain_generate(password: bytes) -> bytes:
    return password


def _md5_verify(password: bytes, raw: bytes) -> bool:
    """{MD5}: an MD5-CRYPT string, or else a PLAIN-MD5 digest (Dovecot's md5_verify)."""
    if raw.startswith(b"$1$"):
        return _crypt_verify(password, raw)
    scheme = _SCHEMES["PLAIN-MD5"]
    return _check(scheme, password, _decode(raw.decode("ascii", "replace"), scheme, None))


def _scram(hash_name: str) -> _Scheme:
    """{SCRAM-SHA-1}, {SCRAM-SHA-256}: Dovecot's password-scheme-scram.c (auth/scramkeys.py)."""
    generate = functools.partial(scramkeys.generate_verifier, hash_name)
    return _Scheme(_Encoding.NONE, 0, generate, functools.partial(scramkeys.check, hash_name))


_PLAIN = _Scheme(_Encoding.NONE, 0, _plain_generate)
_PLAIN_NAMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT"})
_CRAM = _Scheme(_Encoding.HEX, CRAM_MD5_CONTEXT_OCTETS, cram_md5_context)

_SCHEMES: dict[str, _Scheme] = {
    "ARGON2ID": _argon2(_ARGON2ID),
    "ARGON2I": _argon2(_ARGON2I),
    "BLF-CRYPT": _crypt(_bcrypt_generate),
    "SHA512-CRYPT": _crypt(_sha512_crypt_generate),
    "SHA256-CRYPT": _crypt(_sha256_crypt_generate),
    "MD5-CRYPT": _crypt(_passlib_generate(md5_crypt)),
    # Dovecot's CRYPT writes whatever crypt_gensalt() prefers; SHA512-CRYPT is the
    # strongest method every crypt(3) (glibc included) can read.
    "CRYPT": _crypt(_sha512_crypt_generate),
    "DES-CRYPT": _crypt(_passlib_generate(des_crypt)),
    "MD5": _Scheme(_Encoding.NONE, 0, _passlib_generate(md5_crypt), _md5_verify),
    "SSHA512": _salted("sha512"),
    "SSHA256": _salted("sha256"),
    "SSHA": _salted("sha1"),
    "SMD5": _salted("md5"),
    "SHA512": _Scheme(_Encoding.BASE64, 64, _digest("sha512")),
    "SHA256": _Scheme(_Encoding.BASE64, 32, _digest("sha256")),
    "SHA": _Scheme(_Encoding.BASE64, 20, _digest("sha1")),
    "SHA1": _Scheme(_Encoding.BASE64, 20, _digest("sha1")),
    "PLAIN-MD5": _Scheme(_Encoding.HEX, 16, _digest("md5")),
    "LDAP-MD5": _Scheme(_Encoding.BASE64, 16, _digest("md5")),
    "SCRAM-SHA-256": _scram("sha256"),
    "SCRAM-SHA-1": _scram("sha1"),
    "CRAM-MD5": _CRAM,
    "HMAC-MD5": _CRAM,
    **dict.fromkeys(sorted(_PLAIN_NAMES), _PLAIN),
}

SUPPORTED_SCHEMES: tuple[str, ...] = tuple(_SCHEMES)
PLAIN_SCHEMES = _PLAIN_NAMES

# Verified by one comparison or one digest: microseconds of CPU. The others (argon2,
# bcrypt, the crypt family, SCRAM's PBKDF2) are made to be slow.
_FAST_NAMES = _PLAIN_NAMES | {
    "SSHA512", "SSHA256", "SSHA", "SMD5", "SHA512", "SHA256", "SHA", "SHA1",
    "PLAIN-MD5", "LDAP-MD5", "CRAM-MD5", "HMAC-MD5",
}  # fmt: skip


# --- parsing and the public API -----------------------------------------------------


def _split(stored: str, default_scheme: str) -> tuple[str, str]:
    """Dovecot's password_get_scheme(): `{SCHEME}` prefix, else the default scheme."""
    if stored.startswith("{"):
        end = stored.find("}")
        if end != -1:
            return stored[1:end], stored[end + 1 :]
    return default_scheme, stored


def _lookup(name: str) -> tuple[_Scheme, _Encoding | None]:
    """Scheme and explicit encoding (None: the scheme's default) for `NAME[.ENC]`."""
    base, dot, suffix = name.upper().partition(".")
    scheme = _SCHEMES.get(base)
    if scheme is None:
        raise UnknownScheme(f"unknown password scheme {name!r}")
    if not dot:
        return scheme, None
    encoding = _SUFFIXES.get(suffix)
    if encoding is None:
        raise UnknownScheme(f"unknown encoding in password scheme {name!r}")
    return scheme, encoding


def _decode(secret: str, scheme: _Scheme, explicit: _Encoding | None) -> bytes:
    """Dovecot's password_decode(): text as stored -> raw octets."""
    data = secret.encode("utf-8", "surrogateescape")
    encoding = explicit or scheme.encoding
    guessed = explicit is None and encoding is not _Encoding.NONE and scheme.raw_len != 0
    if guessed:
        encoding = _Encoding.HEX if len(data) == 2 * scheme.raw_len else _Encoding.BASE64
    raw: bytes | None = data if encoding is _Encoding.NONE else None
    if encoding is _Encoding.HEX:
        try:
            raw = binascii.a2b_hex(data)
        except (binascii.Error, ValueError):
            if not guessed:
                raise MalformedSecret("secret is not valid hex") from None
    if raw is None:
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedSecret("secret is not valid base64") from None
    if scheme.raw_len and len(raw) != scheme.raw_len:
        raise MalformedSecret(f"secret is {len(raw)} octets, expected {scheme.raw_len}")
    return raw


def _encode(raw: bytes, encoding: _Encoding) -> str:
    if encoding is _Encoding.HEX:
        return raw.hex()
    if encoding is _Encoding.BASE64:
        return base64.b64encode(raw).decode("ascii")
    return raw.decode("utf-8", "surrogateescape")


def _password_octets(password: str) -> bytes:
    # surrogateescape: a password the protocol layer decoded from raw octets keeps them.
    return password.encode("utf-8", "surrogateescape")


def _check(scheme: _Scheme, password: bytes, raw: bytes) -> bool:
    if scheme.check is None:
        return _equal(scheme.generate(password), raw)
    try:
        return scheme.check(password, raw)
    except scramkeys.ScramVerifierError as exc:
        raise MalformedSecret(str(exc)) from None


def verify(password: str, stored: str, *, default_scheme: str = "CRYPT") -> bool:
    """True if `password` matches the stored `{SCHEME}secret`.

    Raises UnknownScheme for a scheme we do not support and MalformedSecret for a secret
    its scheme cannot read; both are the administrator's problem, not a mismatch.
    """
    name, secret = _split(stored, default_scheme)
    scheme, explicit = _lookup(name)
    raw = _decode(secret, scheme, explicit)
    octets = _password_octets(password)
    if b"\0" in octets:
        return False  # cannot be typed into any C-string based implementation
    return _check(scheme, octets, raw)


def is_fast(stored: str, *, default_scheme: str = "CRYPT") -> bool:
    """True if verifying against `stored` is cheap enough to do on the event loop."""
    name, _ = _split(stored, default_scheme)
    return name.upper().partition(".")[0] in _FAST_NAMES


def hash_password(password: str, scheme: str = DEFAULT_SCHEME) -> str:
    """A new `{SCHEME}secret` for `password`, e.g. for `popbox pw` or `popbox user add`."""
    found, explicit = _lookup(scheme)
    octets = _password_octets(password)
    if not octets:
        raise ValueError("a password cannot be empty")
    if b"\0" in octets:
        raise ValueError("a password cannot contain a NUL character")
    raw = found.generate(octets)
    return "{" + scheme.upper() + "}" + _encode(raw, explicit or found.encoding)


def decode_secret(stored: str, *, default_scheme: str = "CRYPT") -> tuple[str, bytes]:
    """(NAME without encoding suffix, raw secret): for CRAM-MD5 and SCRAM; raises as verify()."""
    name, secret = _split(stored, default_scheme)
    scheme, explicit = _lookup(name)
    return name.upper().partition(".")[0], _decode(secret, scheme, explicit)


def plain_secret(stored: str, *, default_scheme: str = "CRYPT") -> str | None:
    """The cleartext of a PLAIN/CLEAR/CLEARTEXT secret (APOP needs it), else None."""
    name, secret = _split(stored, default_scheme)
    if name.upper().partition(".")[0] not in _PLAIN_NAMES:
        return None
    scheme, explicit = _lookup(name)
    return _decode(secret, scheme, explicit).decode("utf-8", "surrogateescape")
