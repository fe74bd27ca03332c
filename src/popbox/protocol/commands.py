"""Parsing one command line into a Command (RFC 1939 section 3).

"Commands in the POP3 consist of a case-insensitive keyword, possibly followed by one or
more arguments. All commands are terminated by a CRLF pair. Keywords and arguments consist
of printable ASCII characters. Keywords and arguments are each separated by a single SPACE
character. Keywords are three or four characters long. Each argument may be up to 40
characters long."
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from popbox.protocol.errors import RemoteProtocolError
from popbox.protocol.limits import MAX_ARGUMENT

# A keyword is 3-4 letters; other printable characters make it an unknown command.
_KEYWORD = re.compile(rb"[A-Za-z]{3,4}")
# Printable ASCII without SPACE: what an argument may contain.
_ARGUMENT = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_ARGUMENT)
# Any control octet (C0 set and DEL); PASS's rest-of-line may hold SPACE and UTF-8.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_NON_ASCII = re.compile(rb"[\x80-\xff]")
_NUMBER = re.compile(rf"[0-9]{{1,{MAX_ARGUMENT}}}")

# Commands whose argument is the rest of the line (RFC 1939 section 7, PASS: "Since the
# PASS command has exactly one argument, a POP3 server may treat spaces in the argument as
# part of the password, instead of as argument separators.")
REST_OF_LINE = frozenset({"PASS"})


@dataclass(frozen=True, slots=True)
class Command:
    """A syntactically valid command: upper-cased keyword and its arguments."""

    keyword: str
    # repr=False: PASS's argument is a password (shared/STYLE.md item 9).
    args: tuple[str, ...] = field(default=(), repr=False)


def strip_line_end(line: bytes) -> bytes:
    """Remove the CRLF (or a bare LF, which we accept as liberally as Dovecot does)."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


def parse_command(line: bytes) -> Command:
    """Parse a line without its line end. Raises RemoteProtocolError with the reply text."""
    if _CONTROL.search(line):
        raise RemoteProtocolError("control characters are not allowed in commands")
    keyword_bytes, space, rest = line.partition(b" ")
    if not _KEYWORD.fullmatch(keyword_bytes):
        raise RemoteProtocolError("unknown command")
    keyword = keyword_bytes.decode("ascii").upper()
    if not space:
        return Command(keyword)
    if keyword in REST_OF_LINE:
        try:
            return Command(keyword, (rest.decode("utf-8"),))
        except UnicodeDecodeError:
            raise RemoteProtocolError("argument is not valid UTF-8") from None
    if _NON_ASCII.search(rest):
        raise RemoteProtocolError("arguments must be printable ASCII")
    args = rest.split(b" ")
    for arg in args:
        if not arg:
            raise RemoteProtocolError("arguments are separated by a single space")
        if not _ARGUMENT.fullmatch(arg):
            raise RemoteProtocolError(f"arguments are at most {MAX_ARGUMENT} characters")
    return Command(keyword, tuple(a.decode("ascii") for a in args))


def parse_number(text: str) -> int:
    """A message number or line count: decimal digits only (no sign, no spaces)."""
    if not _NUMBER.fullmatch(text):
        raise RemoteProtocolError("invalid number")
    return int(text)
