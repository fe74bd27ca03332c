"""Dovecot's `dovecot-uidlist`: the UIDLs Dovecot's POP3 server handed out for a Maildir.

The file (Dovecot src/lib-storage/index/maildir/maildir-uidlist.c) maps IMAP UIDs to
Maildir base names:

    version 3 (Dovecot 1.1 and later):
        3 V<uidvalidity> N<next uid> G<mailbox guid> [more <key><value> fields]
        <uid> [<key><value> ...] :<file name>
    version 1 (Dovecot 1.0, and Courier's courierimapuiddb):
        1 <uidvalidity> <next uid>
        <uid> <file name>

Record fields used here: P<uidl> overrides the POP3 UIDL (an empty P means "the base
name"), W<n> is Dovecot's virtual size (what `,W=` in a name means: the wire size, but
without the CRLF a message lacking a final line end gets on the wire), O<n> is the POP3
listing order (lower first, unordered after). G (message GUID) and S (stored size) are not
needed.

With its default `pop3_uidl_format = %08Xu%08Xv`, Dovecot's POP3 UIDL is the UID and then
the UIDVALIDITY as eight hex digits each. Dovecot's var_expand writes that hex in lower
case: "000000016b08c270", as the real Dovecot 2.3 serves it (tests/storage/
test_maildir_dovecot_oracle.py checks this against a running Dovecot).

Only what Dovecot itself reads is trusted; a broken line is skipped (Dovecot would discard
the whole file and renumber, after which its UIDLs change anyway).

Not supported: a pop3_uidl_format other than the default (such as UW's %08Xv%08Xu or
%v.%u), the header's P field (a per-mailbox format), and a CONTROL= directory elsewhere:
the file is read from the top of the Maildir.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from popbox.storage.maildir_listing import base_name, read_control_file

logger = logging.getLogger(__name__)

DOVECOT_UIDLIST_NAME = "dovecot-uidlist"

# UIDs and UIDVALIDITY are unsigned 32-bit numbers (RFC 3501 section 2.3.1.1); Dovecot
# refuses a UID of 2^32 - 1.
_UID_LIMIT = 2**32 - 1

# A uidlist larger than this is not read (about 80 octets per message: far above any real
# maildrop, and a bound on the memory a planted file can take).
MAX_UIDLIST_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class DovecotRecord:
    """One message Dovecot has seen."""

    uid: int
    pop3_uidl: str | None  # the P field: None if absent, "" for "the base name"
    vsize: int | None  # the W field: size with CRLF line ends
    pop3_order: int | None  # the O field


@dataclass(frozen=True, slots=True)
class DovecotUidlist:
    version: int
    uid_validity: int
    next_uid: int
    records: dict[str, DovecotRecord]  # by base name

    def unique_id(self, base: str, record: DovecotRecord) -> str:
        """The UIDL Dovecot's POP3 server gives this message (pop3_uidl_format default)."""
        if record.pop3_uidl is not None:
            return record.pop3_uidl or base
        return f"{record.uid:08x}{self.uid_validity:08x}"


class BrokenUidlist(ValueError):
    """The header is not one Dovecot would accept: no record can be trusted."""


def _number(text: str, digits: int = 10) -> int | None:
    """A decimal number of at most `digits` digits, else None."""
    if not text.isdigit() or not text.isascii() or len(text) > digits:
        return None
    return int(text)


def _parse_header(line: str) -> tuple[int, int, int]:
    """(version, uidvalidity, next uid) from the first line."""
    version, _, rest = line.partition(" ")
    uid_validity = next_uid = None
    if version == "1":
        fields = rest.split()
        if len(fields) >= 2:
            uid_validity, next_uid = _number(fields[0]), _number(fields[1])
    elif version == "3":
        for field in rest.split():
            if field[:1] == "V":
                uid_validity = _number(field[1:])
            elif field[:1] == "N":
                next_uid = _number(field[1:])
    else:
        raise BrokenUidlist(f"unsupported version {version[:10]!r}")
    if not uid_validity or not next_uid or uid_validity > _UID_LIMIT:
        raise BrokenUidlist(f"broken header {line[:80]!r}")
    return int(version), uid_validity, next_uid


def _parse_record(line: str, version: int) -> tuple[str, DovecotRecord] | None:
    uid_text, _, rest = line.partition(" ")
    uid = _number(uid_text)
    if not uid or uid >= _UID_LIMIT:
        return None
    pop3_uidl: str | None = None
    vsize = order = None
    if version == 3:
        # Fields up to the one that starts with ":", which starts the file name (a P value
        # may itself hold a ":"); Dovecot's maildir_uidlist_read_extended.
        rest = rest.lstrip(" ")
        while rest and rest[0] != ":":
            field, _, rest = rest.partition(" ")
            rest = rest.lstrip(" ")
            key, value = field[:1], field[1:]
            if key == "P":
                pop3_uidl = value
            elif key == "W":
                vsize = _number(value, digits=18)
            elif key == "O":
                order = _number(value)
        if not rest:
            return None
        name = rest[1:]
    else:
        name = rest.lstrip(" ")
    if not name or "/" in name:
        return None
    return base_name(name), DovecotRecord(uid, pop3_uidl, vsize, order)


def parse_dovecot_uidlist(text: str) -> DovecotUidlist:
    """Parse the file's text (decoded with os.fsdecode). Raises BrokenUidlist."""
    lines = text.split("\n")
    version, uid_validity, next_uid = _parse_header(lines[0])
    records: dict[str, DovecotRecord] = {}
    last_uid = 0
    for number, line in enumerate(lines[1:], 2):
        if not line:
            continue
        parsed = _parse_record(line, version)
        if parsed is None:
            logger.warning("dovecot-uidlist line %d is broken, skipped", number)
            continue
        base, record = parsed
        # A later line for the same name wins, as in Dovecot (maildir_uidlist_next).
        records[base] = record
        last_uid = max(last_uid, record.uid)
    # Dovecot: "if next_uid <= prev_read_uid: next_uid = prev_read_uid + 1".
    next_uid = max(next_uid, last_uid + 1)
    return DovecotUidlist(version, uid_validity, next_uid, records)


def read_dovecot_uidlist(maildir: str) -> DovecotUidlist | None:
    """The maildrop's dovecot-uidlist, or None if there is none or it is unusable (logged).
    Raises OSError for I/O errors other than a missing file."""
    path = os.path.join(maildir, DOVECOT_UIDLIST_NAME)
    data = read_control_file(path, MAX_UIDLIST_BYTES)
    if data is None:
        return None
    try:
        return parse_dovecot_uidlist(os.fsdecode(data))
    except BrokenUidlist as exc:
        logger.warning("ignoring %r: %s", path, exc)
        return None
