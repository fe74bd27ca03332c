"""Courier's `courierpop3dsizelist`: the UIDLs Courier's POP3 server handed out.

The file (courier-imap imap/pop3dserver.c, readpop3dlist / savepop3dlist / print_uidl):

    /<version> <next uid> <uidvalidity>
    <file name> <size> <uid>:<uidvalidity>            version 2
    <file name> <size> <uid>:<uidvalidity>:<utf8>     version 3

The file name is the name in cur/ with its info part (":2,S"); Courier matches it to a
message by the part before the ":", i.e. the base name. It may hold spaces: the size and
uid fields are the last two. Courier accepts versions 2 and 3 only; any other first line
makes it start afresh with new UIDLs, so such a file is ignored here too.

UIDLs (print_uidl): "UID<uid>-<uidvalidity>", or "UID<uid>" when the uidvalidity is 0;
uid 0 means the "version 0" UIDL: the base name with every octet outside 0x21-0x7E and
every ', " and + written as "+XX" (upper-case hex).

The sizes in the file are not used: Courier counts a stored CRLF as three octets, while
popbox reports exact wire sizes (RFC 1939 section 11).
"""

from __future__ import annotations

import logging
import os

from popbox.storage.maildir_listing import base_name, is_valid_uidl, read_control_file

logger = logging.getLogger(__name__)

COURIER_SIZELIST_NAME = "courierpop3dsizelist"

# Versions Courier's readpop3dlist accepts (LISTVERSION 3 and LISTVERSION - 1).
_VERSIONS = frozenset({"2", "3"})

# A sizelist larger than this is not read (about 80 octets per message).
MAX_SIZELIST_BYTES = 1 << 30

# print_uidl's "version 0" escapes: these octets, and any outside 0x21-0x7E.
_VERSION0_ESCAPED = frozenset(b"'\"+")


class BrokenSizelist(ValueError):
    """The header is not one Courier would accept: no line can be trusted."""


def _number(text: str) -> int | None:
    if not text.isdigit() or not text.isascii() or len(text) > 20:
        return None
    return int(text)


def version0_unique_id(base: str) -> str:
    """Courier's UIDL for uid 0: the base name, escaped (print_uidl)."""
    return "".join(
        chr(octet) if 0x21 <= octet <= 0x7E and octet not in _VERSION0_ESCAPED else f"+{octet:02X}"
        for octet in os.fsencode(base)
    )


def _parse_line(line: str) -> tuple[str, str] | None:
    name, _, uid_field = line.rpartition(" ")
    name, _, size = name.rpartition(" ")
    if not name or _number(size) is None:
        return None
    parts = uid_field.split(":")
    if len(parts) not in (2, 3):
        return None
    numbers = [_number(part) for part in parts]
    if None in numbers:
        return None
    uid, uid_validity = numbers[0], numbers[1]
    base = base_name(name)
    if not base:
        return None
    if uid == 0:
        return base, version0_unique_id(base)
    return base, f"UID{uid}-{uid_validity}" if uid_validity else f"UID{uid}"


def parse_courier_sizelist(text: str) -> dict[str, str]:
    """base name -> the UIDL Courier gave it. Raises BrokenSizelist for a header Courier
    would not accept; lines Courier would skip are skipped."""
    lines = text.split("\n")
    header = lines[0]
    fields = header[1:].split(" ")
    if not header.startswith("/") or fields[0] not in _VERSIONS or len(fields) < 2:
        raise BrokenSizelist(f"unsupported header {header[:80]!r}")
    found: dict[str, str] = {}
    for number, line in enumerate(lines[1:], 2):
        if not line:
            continue
        parsed = _parse_line(line)
        if parsed is None:
            logger.warning("courierpop3dsizelist line %d is broken, skipped", number)
            continue
        base, unique_id = parsed
        if is_valid_uidl(unique_id):
            found[base] = unique_id
    return found


def read_courier_sizelist(maildir: str) -> dict[str, str] | None:
    """The maildrop's courierpop3dsizelist as base name -> UIDL, or None if there is none
    or it is unusable (logged). Raises OSError for I/O errors other than a missing file."""
    path = os.path.join(maildir, COURIER_SIZELIST_NAME)
    data = read_control_file(path, MAX_SIZELIST_BYTES)
    if data is None:
        return None
    try:
        return parse_courier_sizelist(os.fsdecode(data))
    except BrokenSizelist as exc:
        logger.warning("ignoring %r: %s", path, exc)
        return None
