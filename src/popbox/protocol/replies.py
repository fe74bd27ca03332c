"""Reply framing (RFC 1939 section 3) and the capability list (RFC 2449 section 6)."""

from __future__ import annotations

from collections.abc import Iterable

from popbox.protocol.encoder import encode_lines
from popbox.protocol.errors import LocalProtocolError
from popbox.protocol.limits import MAX_REPLY_LINE

IMPLEMENTATION = "popbox"

# RFC 3206 section 5 [AUTH]: the failure is about authentication policy, not the password.
PLAINTEXT_DISALLOWED = "[AUTH] plaintext authentication disallowed without TLS"


def _line(status: str, text: str) -> bytes:
    line = (f"{status} {text}" if text else status).encode("ascii") + b"\r\n"
    if len(line) > MAX_REPLY_LINE:
        # Our bug, not the client's: RFC 1939 section 3 caps replies at 512 octets.
        raise LocalProtocolError(f"reply of {len(line)} octets exceeds {MAX_REPLY_LINE}")
    return line


def ok(text: str) -> bytes:
    """A positive status line; RFC 1939 section 3: "+OK" in upper case."""
    return _line("+OK", text)


def err(text: str) -> bytes:
    """A negative status line; RFC 1939 section 3: "-ERR" in upper case."""
    return _line("-ERR", text)


def multiline(text: str, lines: Iterable[bytes]) -> bytes:
    """ "+OK text" followed by the lines, byte-stuffed, and the terminating "." line."""
    return ok(text) + encode_lines(lines)


def capabilities(*, authorization: bool, plaintext_allowed: bool) -> list[bytes]:
    """RFC 2449 section 6: what this server really supports, in this state.

    USER is announced only in AUTHORIZATION and only where plaintext login is allowed
    (section 6.8: "USER ... MUST NOT be advertised" after login).
    """
    tags = [b"TOP", b"UIDL"]
    if authorization and plaintext_allowed:
        tags.append(b"USER")
    tags += [
        b"RESP-CODES",
        b"AUTH-RESP-CODE",
        b"PIPELINING",
        b"IMPLEMENTATION " + IMPLEMENTATION.encode("ascii"),
    ]
    return tags
