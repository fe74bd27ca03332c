"""The SASL mechanism interface (RFC 4422), pure: no I/O, no clock, no randomness.

A mechanism is a small state machine: start(initial_response) and step(response) return
the next Step. What a mechanism cannot decide alone (is this password right? what is this
user's SCRAM verifier?) it returns as a check or a lookup; the driver answers it with the
user database. Malformed client input is always a Failure, never an exception: only
LocalProtocolError (a driver calling out of turn) may escape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send `+ base64(data)` and wait for the client's response (RFC 5034 section 4)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Failure:
    """Authentication failed: `-ERR [AUTH] reason`. `reason` is printable ASCII."""

    reason: str


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """PLAIN, LOGIN: the driver checks the password as for USER/PASS."""

    authcid: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class CheckCramMd5:
    """CRAM-MD5 (RFC 2195): digest = hex HMAC-MD5(secret, challenge)."""

    user: str
    challenge: bytes
    digest: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class CheckBearer:
    """OAUTHBEARER (RFC 7628) / XOAUTH2: the driver verifies the bearer token.

    `user` is the authzid / user= the client named (None if it named none); the token's
    own claim decides who logs in, and a named user must match it.
    """

    user: str | None
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class NeedScramCredentials:
    """SCRAM: the driver looks up the user's verifier and calls provide()."""

    user: str


@dataclass(frozen=True, slots=True)
class Success:
    """Authenticated by the mechanism itself (SCRAM verified the client proof).

    `final` is the server's last message (SCRAM server-final). RFC 5034 section 4: POP3 has
    no "additional data with success", so it goes out as one more challenge and the client
    answers with an empty response before `+OK`.
    """

    user: str
    final: bytes | None = None


Step = (
    Challenge
    | Failure
    | CheckPassword
    | CheckCramMd5
    | CheckBearer
    | NeedScramCredentials
    | Success
)


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """A SCRAM verifier (RFC 5802 section 3), as stored or derived from a PLAIN secret."""

    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)
    iterations: int


@dataclass(frozen=True, slots=True)
class MechanismContext:
    """What a mechanism needs from the connection, supplied by the driver."""

    hostname: str
    # A fresh random string (printable ASCII without "," or "="), made by the driver for
    # each AUTH command: CRAM-MD5's challenge and SCRAM's server nonce are built from it.
    nonce: str
    # ("tls-server-end-point" | "tls-exporter", data) on TLS connections, else None.
    channel_binding: tuple[str, bytes] | None = None


class Mechanism(Protocol):
    name: ClassVar[str]

    def start(self, initial: bytes | None) -> Step:
        """Begin; `initial` is the decoded initial response, None when none was given."""
        ...

    def step(self, response: bytes) -> Step:
        """The client's decoded response to the last Challenge."""
        ...

    def provide(self, credentials: ScramCredentials | None) -> Step:
        """Answer NeedScramCredentials (None: unknown user, which must still fail only
        at the proof, so users cannot be enumerated)."""
        ...
