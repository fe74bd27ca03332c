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

# A keyword is 3-4 letters or digits (RFC 6856's UTF8 has one); other printable
# characters make it an unknown command.
_KEYWORD = re.compile(rb"[A-Za-z0-9]{3,4}")
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
# RFC 6856 section 2 ("UTF8 USER"): user names may be UTF-8, in USER and APOP.
UTF8_ARGUMENTS = frozenset({"USER", "APOP"})
# RFC 5034 section 4: AUTH's initial response may be longer than 40 characters (the
# whole command line still obeys the 255-octet limit).
LONG_ARGUMENTS = frozenset({"AUTH"})
_LONG_ARGUMENT = re.compile(rb"[\x21-\x7e]+")


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
    return Command(keyword, _arguments(keyword, rest))


def _arguments(keyword: str, rest: bytes) -> tuple[str, ...]:
    utf8 = keyword in UTF8_ARGUMENTS and bool(_NON_ASCII.search(rest))
    if utf8:
        try:
            text = rest.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("argument is not valid UTF-8") from None
    elif _NON_ASCII.search(rest):
        raise RemoteProtocolError("arguments must be printable ASCII")
    else:
        text = rest.decode("ascii")
    args = tuple(text.split(" "))
    pattern = _LONG_ARGUMENT if keyword in LONG_ARGUMENTS else _ARGUMENT
    for arg in args:
        if not arg:
            raise RemoteProtocolError("arguments are separated by a single space")
        if utf8:
            if len(arg) > MAX_ARGUMENT:
                raise RemoteProtocolError(f"arguments are at most {MAX_ARGUMENT} characters")
        elif not pattern.fullmatch(arg.encode("ascii")):
            raise RemoteProtocolError(f"arguments are at most {MAX_ARGUMENT} characters")
    return args


def parse_number(text: str) -> int:
    """A message number or line count: decimal digits only (no sign, no spaces)."""
    if not _NUMBER.fullmatch(text):
        raise RemoteProtocolError("invalid number")
    return int(text)
