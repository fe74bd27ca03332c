"""What the core hands to its driver (shared/DESIGN.md, "The core's contract").

Reply carries bytes to send. The other events are requests the core cannot answer without
I/O; while one is open the core processes nothing else, and the driver answers it through
the matching Pop3Session method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from popbox.protocol.encoder import MessageEncoder


class ListedMessage(Protocol):
    """One message of the listing snapshot, as any store describes it."""

    @property
    def key(self) -> str: ...
    @property
    def octets(self) -> int: ...
    @property
    def unique_id(self) -> str: ...


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


Event = (
    Reply | NeedData | Authenticate | AuthenticateApop | Retrieve | CommitUpdate | CloseConnection
)
