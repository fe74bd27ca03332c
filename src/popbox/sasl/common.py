"""What every mechanism shares: the turn-taking guard and the malformed-input boundary.

Parsers raise MalformedMessage with a short reason; the mechanism turns it into a Failure
at its public boundary, so a client can never make a mechanism raise (base.py contract).
"""

from __future__ import annotations

import abc
import enum
from typing import ClassVar

from popbox.protocol.errors import LocalProtocolError
from popbox.sasl.base import Challenge, Failure, MechanismContext, ScramCredentials, Step

__all__ = ["MalformedMessage", "OneMessageMechanism", "SaslMechanism", "decode_utf8"]


class MalformedMessage(Exception):
    """The client's message breaks the mechanism's grammar; `reason` is safe to send."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_utf8(data: bytes, what: str) -> str:
    """Strict UTF-8 (RFC 3629): SASL text is UTF-8 throughout (RFC 4422 section 3.4)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage(f"{what} is not valid UTF-8") from None


class SaslMechanism(abc.ABC):
    """Base of every mechanism here; instances satisfy base.Mechanism."""

    name: ClassVar[str]

    def __init__(self, ctx: MechanismContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    def start(self, initial: bytes | None) -> Step: ...

    @abc.abstractmethod
    def step(self, response: bytes) -> Step: ...

    def provide(self, credentials: ScramCredentials | None) -> Step:
        raise LocalProtocolError(f"{self.name}: provide() but no credentials lookup is pending")

    def _misuse(self, call: str, phase: enum.Enum) -> LocalProtocolError:
        return LocalProtocolError(f"{self.name}: {call} called in phase {phase.name}")


class _OnePhase(enum.Enum):
    NEW = "new"
    MESSAGE = "message"  # the empty challenge went out; the response is the message
    DONE = "done"


class OneMessageMechanism(SaslMechanism):
    """A mechanism whose whole input is one client message (PLAIN, OAUTHBEARER, XOAUTH2).

    Without an initial response the server sends an empty challenge and the client's
    response is the message (RFC 4422 section 3.3; RFC 4616 section 2; RFC 7628 3.1).
    """

    def __init__(self, ctx: MechanismContext) -> None:
        super().__init__(ctx)
        self._phase = _OnePhase.NEW

    def start(self, initial: bytes | None) -> Step:
        if self._phase is not _OnePhase.NEW:
            raise self._misuse("start()", self._phase)
        if initial is None:
            self._phase = _OnePhase.MESSAGE
            return Challenge(b"")
        return self._finish(initial)

    def step(self, response: bytes) -> Step:
        if self._phase is not _OnePhase.MESSAGE:
            raise self._misuse("step()", self._phase)
        return self._finish(response)

    def _finish(self, message: bytes) -> Step:
        self._phase = _OnePhase.DONE
        try:
            return self.parse(message)
        except MalformedMessage as malformed:
            return Failure(malformed.reason)

    @abc.abstractmethod
    def parse(self, message: bytes) -> Step:
        """The result for the client's one message; raises MalformedMessage."""
