"""The AUTH command's exchange (RFC 5034 section 4) around one SASL mechanism.

Challenges go out as `+ base64`, responses come back as base64 lines (up to
MAX_SASL_RESPONSE_LINE octets, since OAuth tokens are long), `*` cancels. The mechanism
itself lives in sasl/; this module only frames it and turns its steps into replies and
requests for the driver.
"""

from __future__ import annotations

import base64
import binascii
import enum

from popbox.protocol import replies
from popbox.protocol.errors import LocalProtocolError, RemoteProtocolError
from popbox.protocol.events import (
    Event,
    OpenMaildrop,
    Reply,
    SaslCheck,
    SaslFailed,
    ScramLookup,
)
from popbox.sasl.base import (
    Challenge,
    CheckBearer,
    CheckCramMd5,
    CheckPassword,
    Failure,
    Mechanism,
    NeedScramCredentials,
    ScramCredentials,
    Step,
    Success,
)


class Phase(enum.Enum):
    RESPONSE = "response"  # a challenge went out; the next line is the client's response
    FINAL = "final"  # success data went out as a challenge; expect an empty response
    BEARER_ERROR = "bearer-error"  # RFC 7628 3.2.3: error JSON went out; expect a dummy
    WAITING = "waiting"  # a request to the driver is open


def decode_response(text: bytes) -> bytes:
    """Base64 with no tolerance (RFC 5034 section 4: undecodable is a failure)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RemoteProtocolError("invalid base64 in SASL response") from None


def challenge_line(data: bytes) -> bytes:
    return b"+ " + base64.b64encode(data) + b"\r\n"


class SaslExchange:
    """One AUTH exchange; the session keeps it while it is in progress."""

    def __init__(self, name: str, mechanism: Mechanism) -> None:
        self.name = name
        self.mechanism = mechanism
        self.phase = Phase.WAITING
        self.user: str | None = None

    def start(self, initial: bytes | None) -> Event:
        return self._follow(self.mechanism.start(initial))

    def line(self, line: bytes) -> Event:
        """The client's line while a challenge is outstanding."""
        if line == b"*":
            # RFC 5034 section 4: "*" cancels; the server answers -ERR.
            return self.fail("authentication cancelled")
        try:
            data = decode_response(line)
        except RemoteProtocolError as error:
            return self.fail(error.text)
        if self.phase is Phase.FINAL:
            if data:
                return self.fail("unexpected data after the final challenge")
            assert self.user is not None
            self.phase = Phase.WAITING
            return OpenMaildrop(self.name, self.user)
        return self._follow(self.mechanism.step(data))

    def credentials(self, found: ScramCredentials | None) -> Event:
        return self._follow(self.mechanism.provide(found))

    def bearer_error(self, status: bytes) -> Reply:
        """RFC 7628 section 3.2.2: the error JSON goes out as a challenge first."""
        self.phase = Phase.BEARER_ERROR
        return Reply(challenge_line(status))

    def _follow(self, step: Step) -> Event:
        if isinstance(step, Challenge):
            self.phase = Phase.RESPONSE
            return Reply(challenge_line(step.data))
        self.phase = Phase.WAITING
        if isinstance(step, Failure):
            return self.fail(step.reason)
        if isinstance(step, CheckPassword | CheckCramMd5 | CheckBearer):
            self.user = step.authcid if isinstance(step, CheckPassword) else step.user
            return SaslCheck(self.name, step)
        if isinstance(step, NeedScramCredentials):
            self.user = step.user
            return ScramLookup(self.name, step.user)
        if isinstance(step, Success):
            self.user = step.user
            if step.final is not None:
                self.phase = Phase.FINAL
                return Reply(challenge_line(step.final))
            return OpenMaildrop(self.name, step.user)
        raise LocalProtocolError(f"unknown SASL step {step!r}")

    def fail(self, reason: str) -> SaslFailed:
        self.phase = Phase.WAITING
        return SaslFailed(self.name, self.user, replies.printable_reason(reason))
