"""Who may log in: the Authenticator interface (shared/DESIGN.md, auth/)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from popbox.sasl.base import ScramCredentials


class AuthOutcome(enum.Enum):
    OK = "ok"
    # Unknown user and wrong password are one outcome on purpose: the client must not be
    # able to tell them apart (the server answers both the same way, after the same delay).
    INVALID_CREDENTIALS = "invalid-credentials"
    # The mechanism cannot be used for this user (APOP without a PLAIN secret).
    MECHANISM_UNAVAILABLE = "mechanism-unavailable"
    # The user database could not be read: `-ERR [SYS/TEMP]`.
    TEMPORARY_FAILURE = "temporary-failure"


@dataclass(frozen=True, slots=True)
class AuthResult:
    outcome: AuthOutcome
    # The canonical user name on success (the maildrop owner, RFC 8265 prepared), else None.
    user: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is AuthOutcome.OK


@dataclass(frozen=True, slots=True)
class UserSettings:
    """What a user database may set per user (Dovecot userdb extra fields)."""

    # RFC 2449 section 6.7 EXPIRE for this user: days, or None for the server's setting.
    expire_days: int | None = None


def parse_user_settings(extra_fields: str) -> UserSettings:
    """Dovecot's extra fields: space-separated `key=value`; `userdb_` marks userdb fields.

    `userdb_expire_days=N` sets the user's EXPIRE; anything unknown or malformed is
    ignored (the field may mean something to Dovecot)."""
    expire_days = None
    for field_text in extra_fields.split():
        key, _, value = field_text.partition("=")
        if key == "userdb_expire_days" and value.isdigit():
            expire_days = int(value)
    return UserSettings(expire_days=expire_days)


class Authenticator(Protocol):
    async def user_settings(self, user: str) -> UserSettings:
        """Per-user settings of a logged-in user (defaults where the database has none)."""
        ...

    async def verify_password(self, user: str, password: str) -> AuthResult:
        """USER/PASS (RFC 1939 section 7)."""
        ...

    async def verify_apop(self, user: str, timestamp: str, digest: str) -> AuthResult:
        """APOP (RFC 1939 section 7): digest = hex MD5(timestamp + secret); PLAIN secrets only."""
        ...

    async def verify_cram_md5(self, user: str, challenge: bytes, digest: str) -> AuthResult:
        """CRAM-MD5 (RFC 2195): digest = hex HMAC-MD5(secret, challenge); needs a PLAIN or
        {CRAM-MD5} secret, any other answers INVALID_CREDENTIALS."""
        ...

    async def scram_credentials(self, user: str, mechanism: str) -> ScramCredentials | None:
        """The SCRAM verifier (RFC 5802) of `user` for `mechanism` ("SCRAM-SHA-1",
        "SCRAM-SHA-256", either with "-PLUS"); None for an unknown user or a secret that
        cannot serve it (the mechanism then fails at the proof). ValueError for any other
        mechanism."""
        ...

    async def verify_bearer(self, user: str | None, token: str) -> AuthResult:
        """OAUTHBEARER (RFC 7628) / XOAUTH2: the token's claim names the user; `user` is
        the user the client named (authzid, XOAUTH2 user=), if any, and must match it."""
        ...

    async def canonical_user(self, user: str) -> str | None:
        """The canonical user name (the maildrop owner) if `user` exists, else None; the
        name is prepared as for a login (RFC 8265). For delivery: LMTP RCPT and `popbox
        deliver`. Raises OSError when the user database cannot be read now (a temporary
        failure, never to be taken for an unknown user)."""
        ...
