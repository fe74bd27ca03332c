"""Who may log in: the Authenticator interface (shared/DESIGN.md, auth/)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


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
    # The canonical user name on success (the maildrop owner), else None.
    user: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is AuthOutcome.OK


class Authenticator(Protocol):
    async def verify_password(self, user: str, password: str) -> AuthResult:
        """USER/PASS (RFC 1939 section 7)."""
        ...

    async def verify_apop(self, user: str, timestamp: str, digest: str) -> AuthResult:
        """APOP (RFC 1939 section 7): digest = hex MD5(timestamp + secret); PLAIN secrets only."""
        ...
