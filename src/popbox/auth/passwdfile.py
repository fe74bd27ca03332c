"""Users in a Dovecot passwd-file: reading, authenticating, and `popbox user ...` edits.

The line format and name canonicalisation are in passwdformat.py, the edits in
passwdedit.py; both are re-exported here. A user listed twice keeps its first line (as
Dovecot's db-passwd-file.c).

PasswdFileAuthenticator prepares names and passwords as RFC 8265 says (auth/precis.py)
before lookup and verification. A password that is not valid PRECIS text (octets that
are not UTF-8 from a legacy client, control characters) is verified as received, as
Dovecot would. Bearer tokens (OAUTHBEARER, XOAUTH2) are accepted only for users listed in
the file, whatever their password field says (even none): the file stays the one list of
who has a maildrop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import hmac
import logging
import os
import secrets
import threading

from popbox.auth import mechsecrets, schemes, scramkeys
from popbox.auth.base import AuthOutcome, AuthResult, UserSettings, parse_user_settings
from popbox.auth.oauth import BearerVerifier
from popbox.auth.passwdedit import NEW_FILE_MODE, add_user, delete_user, set_password
from popbox.auth.passwdformat import (
    PASSWD_FILE_DEFAULT_SCHEME,
    NoSuchUser,
    PasswdEntry,
    PasswdFileError,
    StrPath,
    UserExists,
    parse_line,
)
from popbox.auth.precis import canonical_username, normalize_password
from popbox.auth.usernames import InvalidUsername
from popbox.sasl.base import ScramCredentials

__all__ = [
    "NEW_FILE_MODE",
    "PASSWD_FILE_DEFAULT_SCHEME",
    "NoSuchUser",
    "PasswdEntry",
    "PasswdFile",
    "PasswdFileAuthenticator",
    "PasswdFileError",
    "UserExists",
    "add_user",
    "delete_user",
    "list_users",
    "parse_line",
    "parse_passwd_file",
    "set_password",
]

log = logging.getLogger(__name__)

# Keys the salts of SCRAM verifiers derived from PLAIN secrets (mechsecrets.scram_salt):
# one per process, so a client sees the same salt on every login to this process.
_SCRAM_SALT_KEY = secrets.token_bytes(32)


def parse_passwd_file(data: bytes, path: str = "passwd-file") -> dict[str, PasswdEntry]:
    """All usable entries by canonical user name, in file order; a user's first line wins.

    An entry's `user` is its canonical (RFC 8265) name; names that have none are skipped.
    """
    entries: dict[str, PasswdEntry] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        entry = parse_line(raw.decode("utf-8", "surrogateescape"))
        if entry is None:
            continue
        try:
            user = canonical_username(entry.user)
        except InvalidUsername as exc:
            log.warning("%s line %d: skipped: %s", path, number, exc)
            continue
        if user in entries:
            log.warning("%s line %d: user %s exists more than once", path, number, user)
            continue
        entries[user] = entry if user == entry.user else dataclasses.replace(entry, user=user)
    return entries


class PasswdFile:
    """A passwd-file, re-read when it changes (one stat per lookup)."""

    def __init__(self, path: StrPath) -> None:
        self.path = os.fspath(path)
        self._stamp: tuple[int, ...] | None = None
        self._entries: dict[str, PasswdEntry] = {}
        # Lookups run in worker threads; one reload at a time.
        self._lock = threading.Lock()

    def lookup(self, user: str) -> PasswdEntry | None:
        """The entry for canonical name `user`; raises OSError if the file cannot be read."""
        with self._lock:
            self._refresh()
            return self._entries.get(user)

    def users(self) -> list[str]:
        with self._lock:
            self._refresh()
            return list(self._entries)

    def _refresh(self) -> None:
        if self._stamp is not None and _stamp(os.stat(self.path)) == self._stamp:
            return
        with open(self.path, "rb") as handle:
            # The stamp of what we read (fstat), not of what stat() saw a moment earlier.
            stamp = _stamp(os.fstat(handle.fileno()))
            data = handle.read()
        self._entries = parse_passwd_file(data, self.path)
        self._stamp = stamp


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    # An atomic replace changes the inode; an in-place edit changes size or mtime/ctime.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.cache
def _dummy_secret() -> str:
    """A fixed ARGON2ID hash of a random password, so unknown users cost a verification."""
    return schemes.hash_password(secrets.token_urlsafe(24), "ARGON2ID")


_INVALID = AuthResult(AuthOutcome.INVALID_CREDENTIALS)
_TEMPORARY = AuthResult(AuthOutcome.TEMPORARY_FAILURE)


def _canonical(user: str) -> str | None:
    try:
        return canonical_username(user)
    except InvalidUsername:
        return None


def _prepared_password(password: str) -> str:
    """The OpaqueString form, or the password as received if it is not PRECIS text."""
    try:
        return normalize_password(password)
    except ValueError:
        return password


class PasswdFileAuthenticator:
    """The Authenticator (auth/base.py) over a passwd-file, optionally with bearer tokens."""

    def __init__(self, path: StrPath, *, oauth: BearerVerifier | None = None) -> None:
        self._file = PasswdFile(path)
        self._oauth = oauth

    async def verify_password(self, user: str, password: str) -> AuthResult:
        name = _canonical(user)
        if not password or name is None:
            # An empty password is never valid, whatever the file says (`{PLAIN}` alone).
            return _INVALID
        # argon2/bcrypt take tens of milliseconds of CPU: keep them off the event loop.
        return await asyncio.to_thread(self._verify_password, name, _prepared_password(password))

    async def verify_apop(self, user: str, timestamp: str, digest: str) -> AuthResult:
        name = _canonical(user)
        if name is None:
            return _INVALID
        return await asyncio.to_thread(self._verify_apop, name, timestamp, digest)

    async def verify_cram_md5(self, user: str, challenge: bytes, digest: str) -> AuthResult:
        name = _canonical(user)
        if name is None:
            return _INVALID
        return await asyncio.to_thread(self._verify_cram_md5, name, challenge, digest)

    async def scram_credentials(self, user: str, mechanism: str) -> ScramCredentials | None:
        # A mechanism other than SCRAM-SHA-1/256[-PLUS] is the caller's bug: ValueError.
        scramkeys.scram_hash(mechanism)
        name = _canonical(user)
        if name is None:
            return None
        # Deriving from a PLAIN secret is a PBKDF2: CPU work, off the event loop.
        return await asyncio.to_thread(self._scram_credentials, name, mechanism)

    async def verify_bearer(self, user: str | None, token: str) -> AuthResult:
        if self._oauth is None:
            return _INVALID
        result = self._oauth.verify(token, user)
        if not result.ok or result.user is None:
            log.info("bearer token refused: %s", result.error)
            return _INVALID
        name = _canonical(result.user)
        if name is None:
            log.info(
                "bearer token refused: the %s claim is no user name",
                self._oauth.config.username_claim,
            )
            return _INVALID
        try:
            entry = await asyncio.to_thread(self._lookup, name)
        except OSError:
            return _TEMPORARY
        if entry is None:
            log.info("bearer token refused: %s is not in passwd-file %s", name, self._file.path)
            return _INVALID
        return AuthResult(AuthOutcome.OK, entry.user)

    async def canonical_user(self, user: str) -> str | None:
        """The canonical (RFC 8265) name of `user` if the passwd-file lists it, else None.

        The same preparation as at login; for delivery (LMTP RCPT, `popbox deliver`).
        Raises OSError if the file cannot be read: a temporary failure, not "no such user".
        """
        name = _canonical(user)
        if name is None:
            return None
        entry = await asyncio.to_thread(self._lookup, name)
        return None if entry is None else entry.user

    async def user_settings(self, user: str) -> UserSettings:
        """Per-user settings from the entry's extra fields (Dovecot's `userdb_*` fields),
        for a user who has just logged in; defaults if there are none."""
        try:
            entry = await asyncio.to_thread(self._lookup, user)
        except OSError:
            return UserSettings()
        return UserSettings() if entry is None else parse_user_settings(entry.extra_fields)

    def _lookup(self, user: str) -> PasswdEntry | None:
        try:
            return self._file.lookup(user)
        except OSError as exc:
            log.error("passwd-file %s: cannot read: %s", self._file.path, exc.strerror)
            raise

    def _unusable(self, user: str, exc: Exception) -> None:
        log.warning("passwd-file %s: user %s: unusable password: %s", self._file.path, user, exc)

    def _verify_password(self, user: str, password: str) -> AuthResult:
        try:
            entry = self._lookup(user)
        except OSError:
            return _TEMPORARY
        if entry is None:
            # Same work as for a known user, so timing does not tell them apart.
            schemes.verify(password, _dummy_secret())
            return _INVALID
        try:
            matched = schemes.verify(
                password, entry.secret, default_scheme=PASSWD_FILE_DEFAULT_SCHEME
            )
        except schemes.SchemeError as exc:
            self._unusable(user, exc)
            return _INVALID
        return AuthResult(AuthOutcome.OK, entry.user) if matched else _INVALID

    def _verify_apop(self, user: str, timestamp: str, digest: str) -> AuthResult:
        """RFC 1939 section 7: digest = hex MD5(timestamp + shared secret)."""
        try:
            entry = self._lookup(user)
        except OSError:
            return _TEMPORARY
        secret = None
        if entry is not None:
            try:
                secret = schemes.plain_secret(
                    entry.secret, default_scheme=PASSWD_FILE_DEFAULT_SCHEME
                )
            except schemes.SchemeError:
                secret = None
        # A user without a PLAIN secret answers like a wrong digest (not MECHANISM_UNAVAILABLE),
        # so APOP does not reveal which users exist or how their secret is stored.
        key = secret if secret is not None else secrets.token_hex(16)
        expected = hashlib.md5(_octets(timestamp) + _octets(key)).hexdigest()
        matched = hmac.compare_digest(expected.encode("ascii"), _octets(digest.lower()))
        if entry is None or secret is None or not matched:
            return _INVALID
        return AuthResult(AuthOutcome.OK, entry.user)

    def _verify_cram_md5(self, user: str, challenge: bytes, digest: str) -> AuthResult:
        """RFC 2195: digest = hex HMAC-MD5(secret, challenge)."""
        try:
            entry = self._lookup(user)
        except OSError:
            return _TEMPORARY
        expected = None
        if entry is not None:
            try:
                expected = mechsecrets.cram_md5_digest(
                    entry.secret, challenge, default_scheme=PASSWD_FILE_DEFAULT_SCHEME
                )
            except schemes.SchemeError as exc:
                self._unusable(user, exc)
        # Unknown users and unusable secrets answer like a wrong digest, after the same work.
        key_digest = expected or hmac.digest(secrets.token_bytes(16), challenge, "md5")
        matched = hmac.compare_digest(key_digest.hex().encode(), _octets(digest.lower()))
        if entry is None or expected is None or not matched:
            return _INVALID
        return AuthResult(AuthOutcome.OK, entry.user)

    def _scram_credentials(self, user: str, mechanism: str) -> ScramCredentials | None:
        try:
            entry = self._lookup(user)
        except OSError:
            return None  # the proof fails; the read error is logged
        if entry is None:
            mechsecrets.dummy_scram_work(mechanism)
            return None
        try:
            return mechsecrets.scram_credentials(
                entry.secret,
                mechanism,
                mechsecrets.scram_salt(_SCRAM_SALT_KEY, entry.user),
                default_scheme=PASSWD_FILE_DEFAULT_SCHEME,
            )
        except schemes.SchemeError as exc:
            self._unusable(user, exc)
            return None


def _octets(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def list_users(path: StrPath) -> list[str]:
    """User names in file order."""
    try:
        return PasswdFile(path).users()
    except OSError as exc:
        raise PasswdFileError(f"{os.fspath(path)}: cannot read: {exc.strerror}") from exc
