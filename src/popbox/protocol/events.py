"""What the core hands to its driver (shared/DESIGN.md, "The core's contract").

Reply carries bytes to send. The other events are requests the core cannot answer without
I/O; while one is open the core processes nothing else, and the driver answers it through
the matching Pop3Session method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

from popbox.protocol.encoder import MessageEncoder
from popbox.sasl.base import CheckBearer, CheckCramMd5, CheckPassword


class ListedMessage(Protocol):
    """One message of the listing snapshot, as any store describes it."""

    @property
    def key(self) -> str: ...
    @property
    def octets(self) -> int: ...
    @property
    def unique_id(self) -> str: ...


@runtime_checkable
class ListedColumns(Protocol):
    """The whole listing held by column (lists of equal length, in message-number order).
    A store that keeps its listing this way spares the core a pass per message at login:
    100,000 messages are 3 list references instead of 100,000 objects."""

    @property
    def keys(self) -> Sequence[str]: ...
    @property
    def octet_counts(self) -> Sequence[int]: ...
    @property
    def unique_ids(self) -> Sequence[str]: ...


class Listed(NamedTuple):
    """One message of a listing given by column, built when a command names it."""

    key: str
    octets: int
    unique_id: str


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes for the wire: one or more complete reply lines."""

    data: bytes


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing more can be done until more bytes arrive."""


@dataclass(frozen=True, slots=True)
class Authenticate:
    """USER/PASS: check the password, then open and lock the maildrop.

    Answer with maildrop_opened(), auth_rejected(), auth_unavailable() or maildrop_locked().
    """

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthenticateApop:
    """APOP (RFC 1939 section 7): digest = MD5(timestamp + shared secret), in hex."""

    user: str
    timestamp: str
    digest: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Retrieve:
    """RETR or TOP. Open the message; on failure call retrieve_failed() (nothing has been
    sent). On success send `status_line`, then each block through `encoder.feed()`, then
    `encoder.finish()`, then call retrieve_done(). A failure after the status line has
    been sent cannot be reported in-band: close the connection."""

    message_number: int
    message: ListedMessage
    status_line: bytes
    encoder: MessageEncoder = field(compare=False)


@dataclass(frozen=True, slots=True)
class CommitUpdate:
    """QUIT in TRANSACTION: the UPDATE state (RFC 1939 section 6). Remove these messages,
    release the maildrop, then call update_done()."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Every reply has been handed out; close the connection now."""


@dataclass(frozen=True, slots=True)
class StartTls:
    """STLS accepted (RFC 2595 section 4): send `reply`, run the TLS handshake, then call
    tls_established(); if the handshake fails, close the connection."""

    reply: bytes


@dataclass(frozen=True, slots=True)
class SaslCheck:
    """AUTH: verify what the mechanism collected (a password, a CRAM-MD5 digest, a bearer
    token), then open the maildrop as for Authenticate; on failure auth_rejected()."""

    mechanism: str
    check: CheckPassword | CheckCramMd5 | CheckBearer


@dataclass(frozen=True, slots=True)
class ScramLookup:
    """AUTH SCRAM-*: look up the user's SCRAM verifier and call scram_credentials()."""

    mechanism: str
    user: str


@dataclass(frozen=True, slots=True)
class OpenMaildrop:
    """The mechanism authenticated the user itself (SCRAM): open the maildrop."""

    mechanism: str
    user: str


@dataclass(frozen=True, slots=True)
class SaslFailed:
    """The SASL exchange failed (bad proof, malformed or cancelled exchange): apply the
    failure delay, then call auth_rejected()."""

    mechanism: str
    user: str | None
    reason: str


LoginRequest = Authenticate | AuthenticateApop | SaslCheck | OpenMaildrop | SaslFailed
Request = LoginRequest | ScramLookup | Retrieve | CommitUpdate | StartTls
Event = Reply | NeedData | CloseConnection | Request
