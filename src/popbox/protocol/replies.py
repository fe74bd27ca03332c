"""Reply framing (RFC 1939 section 3) and the capability list (RFC 2449 section 6)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from popbox.protocol.encoder import encode_lines
from popbox.protocol.errors import LocalProtocolError
from popbox.protocol.limits import MAX_REPLY_LINE

if TYPE_CHECKING:
    from popbox.protocol.session_config import SessionConfig

IMPLEMENTATION = "popbox"

# RFC 3206 section 5 [AUTH]: the failure is about authentication policy, not the password.
PLAINTEXT_DISALLOWED = "[AUTH] plaintext authentication disallowed without TLS"
INVALID_CREDENTIALS = "invalid user name or password"


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


def printable_reason(text: str, limit: int = 200) -> str:
    """Text fit for a reply line: printable ASCII only, bounded."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return cleaned[:limit] or "authentication failed"


def capabilities(config: SessionConfig, *, authorization: bool) -> list[bytes]:
    """RFC 2449 section 6: what this server really supports, on this connection, now.

    USER, SASL and STLS are announced only in AUTHORIZATION (sections 6.3, 6.8; RFC 2595
    section 4: STLS not once TLS is active); USER and the plaintext mechanisms only where
    plaintext login is allowed.
    """
    tags = [b"TOP", b"UIDL"]
    if authorization:
        if config.plaintext_allowed:
            tags.append(b"USER")
        if config.mechanisms:
            tags.append(" ".join(["SASL", *config.mechanisms]).encode("ascii"))
        if config.stls_available and not config.tls_active:
            tags.append(b"STLS")
    tags += [b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"UTF8 USER"]
    if config.login_delay is not None:
        tags.append(b"LOGIN-DELAY %d" % config.login_delay)
    if config.expire is not None:
        tags.append(b"EXPIRE " + config.expire.encode("ascii"))
    tags.append(b"IMPLEMENTATION " + IMPLEMENTATION.encode("ascii"))
    return tags
