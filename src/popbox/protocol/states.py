"""The states of a POP3 session and the one table of legal moves (RFC 1939 sections 3-6)."""

from __future__ import annotations

import enum

from popbox.protocol.errors import RemoteProtocolError


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    # Our own: the connection is finished (after QUIT's reply or a fatal error).
    CLOSED = "CLOSED"


# Which command may be given in which state. CAPA (RFC 2449 section 5) is valid in both
# AUTHORIZATION and TRANSACTION; nothing is valid in UPDATE (the server is busy committing).
LEGAL_COMMANDS: dict[State, frozenset[str]] = {
    State.AUTHORIZATION: frozenset(
        {"USER", "PASS", "APOP", "AUTH", "STLS", "UTF8", "QUIT", "CAPA"}
    ),
    State.TRANSACTION: frozenset(
        {"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "QUIT", "CAPA"}
    ),
    State.UPDATE: frozenset(),
    State.CLOSED: frozenset(),
}

KNOWN_COMMANDS = frozenset().union(*LEGAL_COMMANDS.values())


def check_legal(state: State, keyword: str) -> None:
    """The one gate: raise the client-fault error naming state and command."""
    if keyword in LEGAL_COMMANDS[state]:
        return
    if keyword not in KNOWN_COMMANDS:
        raise RemoteProtocolError("unknown command")
    raise RemoteProtocolError(f"{keyword} not allowed in {state.value} state")


UNKNOWN_KEYWORD = "unknown"


def command_label(line: bytes) -> str:
    """A command line's keyword if it is one we know, else "unknown": what the driver's
    metrics count, from a fixed set so that a client cannot invent new values."""
    keyword = line[:5].partition(b" ")[0].upper().decode("ascii", "replace")
    return keyword if keyword in KNOWN_COMMANDS else UNKNOWN_KEYWORD
