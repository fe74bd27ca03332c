"""The Authenticator (auth/base.py) over any database of Dovecot-style `{SCHEME}secret`s.

A user database (the passwd-file, the PostgreSQL `users` table) only has to find a user's
record; verifying passwords, APOP and CRAM-MD5 digests, deriving SCRAM verifiers and
checking bearer tokens is the same for all of them and lives here, once.

Names and passwords are prepared as RFC 8265 says (auth/precis.py) before lookup and
verification; a password that is not valid PRECIS text (octets that are not UTF-8 from a
legacy client, control characters) is verified as received, as Dovecot would. Unknown
users cost the same work as known ones and get the same answer. Bearer tokens are accepted
only for users the database lists, whatever their secret (even none): the database stays
the one list of who has a maildrop.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field

from popbox.auth import mechsecrets, schemes, scramkeys
from popbox.auth.base import AuthOutcome, AuthResult, UserSettings
from popbox.auth.oauth import BearerVerifier
from popbox.auth.precis import canonical_username, normalize_password
from popbox.auth.usernames import InvalidUsername
from popbox.sasl.base import ScramCredentials

__all__ = ["UserDatabaseAuthenticator", "UserRecord"]

# Keys the salts of SCRAM verifiers derived from PLAIN secrets (mechsecrets.scram_salt):
# one per process, so a client sees the same salt on every login to this process.
_SCRAM_SALT_KEY = secrets.token_bytes(32)

_INVALID = AuthResult(AuthOutcome.INVALID_CREDENTIALS)
_TEMPORARY = AuthResult(AuthOutcome.TEMPORARY_FAILURE)


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What a user database holds for one user."""

    user: str  # the canonical (RFC 8265) name: the maildrop owner
    secret: str = field(repr=False)  # {SCHEME}secret, or without {SCHEME}: default_scheme
    settings: UserSettings = field(default_factory=UserSettings)


@functools.cache
def _dummy_secret() -> str:
    """A fixed ARGON2ID hash of a random password, so unknown users cost a verification."""
    return schemes.hash_password(secrets.token_urlsafe(24), "ARGON2ID")


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


def _octets(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class UserDatabaseAuthenticator:
    """Subclasses implement `find`; `source` names the database in log lines."""

    default_scheme = "CRYPT"  # Dovecot's passwd-file default (`scheme=CRYPT`)

    def __init__(self, source: str, *, oauth: BearerVerifier | None = None) -> None:
        self.source = source
        self._oauth = oauth
        self._log = logging.getLogger(type(self).__module__)

    async def find(self, user: str) -> UserRecord | None:
        """The record of canonical name `user`, None if there is none; OSError when the
        database cannot be read now (logged by the implementation)."""
        raise NotImplementedError

    async def _record(self, user: str) -> tuple[str, UserRecord | None] | AuthResult:
        """(canonical name, its record or None); INVALID for a name that cannot be one,
        TEMPORARY_FAILURE when the database cannot be read now."""
        name = _canonical(user)
        if name is None:
            return _INVALID
        try:
            return name, await self.find(name)
        except OSError:
            return _TEMPORARY

    async def verify_password(self, user: str, password: str) -> AuthResult:
        if not password:
            # An empty password is never valid, whatever the database says (`{PLAIN}`).
            return _INVALID
        found = await self._record(user)
        if isinstance(found, AuthResult):
            return found
        record = found[1]
        prepared = _prepared_password(password)
        scheme = self.default_scheme
        if record is not None and schemes.is_fast(record.secret, default_scheme=scheme):
            return self._check_password(record, prepared)  # a digest: no thread hop
        # argon2/bcrypt take tens of milliseconds of CPU: keep them off the event loop.
        return await asyncio.to_thread(self._check_password, record, prepared)

    async def verify_apop(self, user: str, timestamp: str, digest: str) -> AuthResult:
        found = await self._record(user)
        if isinstance(found, AuthResult):
            return found
        return self._check_apop(found[1], timestamp, digest)

    async def verify_cram_md5(self, user: str, challenge: bytes, digest: str) -> AuthResult:
        found = await self._record(user)
        if isinstance(found, AuthResult):
            return found
        return self._check_cram_md5(found[1], challenge, digest)

    async def scram_credentials(self, user: str, mechanism: str) -> ScramCredentials | None:
        # A mechanism other than SCRAM-SHA-1/256[-PLUS] is the caller's bug: ValueError.
        scramkeys.scram_hash(mechanism)
        found = await self._record(user)
        if isinstance(found, AuthResult):
            return None  # no such name, or the read error is logged: the proof fails
        name, record = found
        # Deriving from a PLAIN secret is a PBKDF2: CPU work, off the event loop.
        return await asyncio.to_thread(self._scram_credentials, record, name, mechanism)

    async def verify_bearer(self, user: str | None, token: str) -> AuthResult:
        if self._oauth is None:
            return _INVALID
        result = self._oauth.verify(token, user)
        if not result.ok or result.user is None:
            self._log.info("bearer token refused: %s", result.error)
            return _INVALID
        name = _canonical(result.user)
        if name is None:
            self._log.info(
                "bearer token refused: the %s claim is no user name",
                self._oauth.config.username_claim,
            )
            return _INVALID
        try:
            record = await self.find(name)
        except OSError:
            return _TEMPORARY
        if record is None:
            self._log.info("bearer token refused: %s is not in %s", name, self.source)
            return _INVALID
        return AuthResult(AuthOutcome.OK, record.user)

    async def canonical_user(self, user: str) -> str | None:
        """The canonical (RFC 8265) name of `user` if the database lists it, else None.

        The same preparation as at login; for delivery (LMTP RCPT, `popbox deliver`).
        Raises OSError if the database cannot be read: a temporary failure, not "no such
        user".
        """
        name = _canonical(user)
        if name is None:
            return None
        record = await self.find(name)
        return None if record is None else record.user

    async def user_settings(self, user: str) -> UserSettings:
        """Per-user settings of a user who has just logged in; defaults if the database
        has none or cannot be read."""
        try:
            record = await self.find(user)
        except OSError:
            return UserSettings()
        return UserSettings() if record is None else record.settings

    def _unusable(self, user: str, exc: Exception) -> None:
        self._log.warning("%s: user %s: unusable password: %s", self.source, user, exc)

    def _check_password(self, record: UserRecord | None, password: str) -> AuthResult:
        if record is None:
            # Same work as for a known user, so timing does not tell them apart.
            schemes.verify(password, _dummy_secret())
            return _INVALID
        try:
            matched = schemes.verify(password, record.secret, default_scheme=self.default_scheme)
        except schemes.SchemeError as exc:
            self._unusable(record.user, exc)
            return _INVALID
        return AuthResult(AuthOutcome.OK, record.user) if matched else _INVALID

    def _check_apop(self, record: UserRecord | None, timestamp: str, digest: str) -> AuthResult:
        """RFC 1939 section 7: digest = hex MD5(timestamp + shared secret)."""
        secret = None
        if record is not None:
            try:
                secret = schemes.plain_secret(record.secret, default_scheme=self.default_scheme)
            except schemes.SchemeError:
                secret = None
        # A user without a PLAIN secret answers like a wrong digest (not
        # MECHANISM_UNAVAILABLE), so APOP does not reveal which users exist or how their
        # secret is stored.
        key = secret if secret is not None else secrets.token_hex(16)
        expected = hashlib.md5(_octets(timestamp) + _octets(key)).hexdigest()
        matched = hmac.compare_digest(expected.encode("ascii"), _octets(digest.lower()))
        if record is None or secret is None or not matched:
            return _INVALID
        return AuthResult(AuthOutcome.OK, record.user)

    def _check_cram_md5(
        self, record: UserRecord | None, challenge: bytes, digest: str
    ) -> AuthResult:
        """RFC 2195: digest = hex HMAC-MD5(secret, challenge)."""
        expected = None
        if record is not None:
            try:
                expected = mechsecrets.cram_md5_digest(
                    record.secret, challenge, default_scheme=self.default_scheme
                )
            except schemes.SchemeError as exc:
                self._unusable(record.user, exc)
        # Unknown users and unusable secrets answer like a wrong digest, after the same work.
        key_digest = expected or hmac.digest(secrets.token_bytes(16), challenge, "md5")
        matched = hmac.compare_digest(key_digest.hex().encode(), _octets(digest.lower()))
        if record is None or expected is None or not matched:
            return _INVALID
        return AuthResult(AuthOutcome.OK, record.user)

    def _scram_credentials(
        self, record: UserRecord | None, name: str, mechanism: str
    ) -> ScramCredentials | None:
        if record is None:
            mechsecrets.dummy_scram_work(mechanism)
            return None
        try:
            return mechsecrets.scram_credentials(
                record.secret,
                mechanism,
                mechsecrets.scram_salt(_SCRAM_SALT_KEY, record.user),
                default_scheme=self.default_scheme,
            )
        except schemes.SchemeError as exc:
            self._unusable(name, exc)
            return None
