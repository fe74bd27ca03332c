"""Answering the core's login requests: credentials, throttling, LOGIN-DELAY, the lock.

Every failed login is delayed (RFC 1939 section 4 leaves it to the server; Dovecot's
auth_failure_delay doubles per address) without blocking other sessions, counted per
address and per user, and logged in one line that fail2ban can match:

    login failed user=<user> client=<address> mechanism=<mechanism> reason=<reason>
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from popbox.auth.base import AuthOutcome, AuthResult
from popbox.protocol.events import (
    Authenticate,
    AuthenticateApop,
    Event,
    LoginRequest,
    OpenMaildrop,
    SaslCheck,
    SaslFailed,
    ScramLookup,
)
from popbox.protocol.session import Pop3Session
from popbox.sasl.base import CheckBearer, CheckCramMd5, CheckPassword
from popbox.server.context import OAUTH_MECHANISMS, ServerContext
from popbox.storage.base import InvalidMaildropUser, Maildrop, MaildropLocked, StoreError

log = logging.getLogger("popbox.login")

# The login line's reason -> the popbox_logins_total result (README: Metrics); any other
# reason (invalid-credentials, a SASL failure) is "failed".
_RESULTS = {
    "blocked": "blocked",
    "in-use": "in_use",
    "login-delay": "login_delay",
    "temporary-failure": "temp_failure",
}

# RFC 7628 section 3.2.2: the error a failed bearer token gets, as a JSON challenge.
BEARER_ERROR = json.dumps({"status": "invalid_token"}, separators=(",", ":")).encode()


def printable(text: str | None) -> str:
    """Client-chosen text made safe for a log line (no control characters, no newlines)."""
    if text is None:
        return "-"
    safe = "".join(c if c.isprintable() and not c.isspace() else f"\\x{ord(c):02x}" for c in text)
    return safe[:100] or "-"


@dataclass(slots=True)
class LoginResult:
    """What the connection needs after a login request: the reply or next event, and the
    maildrop if the login succeeded."""

    event: Event
    maildrop: Maildrop | None = None
    # RFC 2449 EXPIRE for this user (the server's setting unless the user has one).
    expire_days: int | None = None


class LoginHandler:
    def __init__(self, ctx: ServerContext, session: Pop3Session, peer: str) -> None:
        self.ctx = ctx
        self.session = session
        self.peer = peer

    async def scram_lookup(self, event: ScramLookup) -> Event:
        found = await self.ctx.authenticator.scram_credentials(event.user, event.mechanism)
        return self.session.scram_credentials(found)

    async def login(self, event: LoginRequest) -> LoginResult:
        started = time.monotonic()
        mechanism, user = _describe(event)
        if self.ctx.throttle.user_blocked(user, started) if user else False:
            await self._delay(started)
            self._failed(user, mechanism, "blocked")
            return LoginResult(self.session.auth_blocked())
        result = await self._verify(event)
        if not result.ok:
            return LoginResult(await self._reject(event, user, mechanism, result, started))
        assert result.user is not None
        self.ctx.throttle.record_success(self.peer, result.user, time.monotonic())
        return await self._open(result.user, mechanism)

    async def _verify(self, event: LoginRequest) -> AuthResult:
        auth = self.ctx.authenticator
        if isinstance(event, Authenticate):
            return await auth.verify_password(event.user, event.password)
        if isinstance(event, AuthenticateApop):
            return await auth.verify_apop(event.user, event.timestamp, event.digest)
        if isinstance(event, OpenMaildrop):
            return AuthResult(AuthOutcome.OK, event.user)
        if isinstance(event, SaslFailed):
            return AuthResult(AuthOutcome.INVALID_CREDENTIALS)
        check = event.check
        if isinstance(check, CheckPassword):
            return await auth.verify_password(check.authcid, check.password)
        if isinstance(check, CheckCramMd5):
            return await auth.verify_cram_md5(check.user, check.challenge, check.digest)
        checker: Callable[[str | None, str], Awaitable[AuthResult]] = auth.verify_bearer
        assert isinstance(check, CheckBearer)
        return await checker(check.user, check.token)

    async def _reject(
        self,
        event: LoginRequest,
        user: str | None,
        mechanism: str,
        result: AuthResult,
        started: float,
    ) -> Event:
        await self._delay(started)
        self.ctx.throttle.record_failure(self.peer, user, time.monotonic())
        reason = event.reason if isinstance(event, SaslFailed) else result.outcome.value
        self._failed(user, mechanism, reason)
        if result.outcome is AuthOutcome.TEMPORARY_FAILURE:
            return self.session.auth_unavailable()
        if isinstance(event, SaslCheck) and event.mechanism in OAUTH_MECHANISMS:
            return self.session.auth_rejected(bearer_status=BEARER_ERROR)
        return self.session.auth_rejected()

    async def _delay(self, started: float) -> None:
        """The failure delay, counted from the command so hashing time does not show."""
        delay = self.ctx.throttle.failure_delay(self.peer, started)
        await asyncio.sleep(max(0.0, started + delay - time.monotonic()))

    async def _open(self, user: str, mechanism: str) -> LoginResult:
        delays = self.ctx.login_delays
        now = time.monotonic()
        if delays is not None and delays.check(user, now) is not None:
            self._failed(user, mechanism, "login-delay")
            return LoginResult(self.session.login_delayed())
        try:
            maildrop = await self.ctx.store.open(user)
        except MaildropLocked:
            self._failed(user, mechanism, "in-use")
            return LoginResult(self.session.maildrop_locked())
        except InvalidMaildropUser as error:
            self.ctx.metrics.login("maildrop_unavailable", mechanism)
            log.error("no maildrop for user=%s client=%s: %s", user, self.peer, error)
            return LoginResult(self.session.maildrop_unavailable(permanent=True))
        except (StoreError, OSError, ValueError) as error:
            self.ctx.metrics.login("maildrop_unavailable", mechanism)
            self.ctx.metrics.store_error("open")
            log.error("maildrop unavailable user=%s client=%s error=%s", user, self.peer, error)
            return LoginResult(self.session.maildrop_unavailable())
        if delays is not None:
            delays.record_login(user, now)
        settings = await self.ctx.authenticator.user_settings(user)
        expire_days = self.ctx.policy.expire_days
        if settings.expire_days is not None:
            expire_days = settings.expire_days
            # RFC 2449 section 6.7: after login, CAPA shows this user's own policy.
            self.session.user_policy(expire=str(expire_days))
        listing = maildrop.listing
        self.ctx.metrics.login("ok", mechanism)
        log.info(
            "login ok user=%s client=%s mechanism=%s messages=%d",
            printable(user),
            self.peer,
            mechanism,
            len(listing),
            extra={"user": printable(user), "client": self.peer, "mechanism": mechanism},
        )
        return LoginResult(self.session.maildrop_opened(user, listing), maildrop, expire_days)

    def _failed(self, user: str | None, mechanism: str, reason: str) -> None:
        self.ctx.metrics.login(_RESULTS.get(reason, "failed"), mechanism)
        fields = {"user": printable(user), "client": self.peer, "mechanism": mechanism}
        log.warning(
            "login failed user=%s client=%s mechanism=%s reason=%s",
            printable(user),
            self.peer,
            mechanism,
            reason,
            extra={**fields, "reason": reason},
        )


def _describe(event: LoginRequest) -> tuple[str, str | None]:
    """(mechanism, user named by the client) for throttling and the log line."""
    if isinstance(event, Authenticate):
        return "USER", event.user
    if isinstance(event, AuthenticateApop):
        return "APOP", event.user
    if isinstance(event, OpenMaildrop | SaslFailed):
        return event.mechanism, event.user
    check = event.check
    user = check.authcid if isinstance(check, CheckPassword) else check.user
    return event.mechanism, user
