"""Unique-ids (RFC 1939 section 7, UIDL) for mbox messages, which have no names.

A message's UIDL must stay the same across sessions and when other messages are deleted,
and an mbox gives a message nothing stable but its own text. So:

1. the message's `X-UIDL:` header, if present and valid (1-70 octets in 0x21-0x7E, as RFC
   1939 requires of a unique-id) and held by no other message of the mbox. This is the
   header qpopper and other mbox POP3 servers write, so their UIDLs carry over;
2. otherwise the first 32 hex digits of the SHA-1 of the message's header block: the
   header lines up to the first empty line, with LF line ends, without the fields that mail
   readers rewrite in place (Status, X-Status, X-Keywords, X-UID, X-IMAP, X-IMAPbase,
   Content-Length, Lines: mutt, Pine and Dovecot add or update them), so reading the mbox
   with a local mail reader does not change the UIDL.
3. Messages with identical header blocks (a message delivered twice) get "-2", "-3", ...
   appended, in file order.

Trade-off: the digest is stable forever for a message whose header nobody edits, and needs
no state (it survives the loss of every index and a copy of the mbox to another server),
but a client sees a new message if a tool edits other header fields in place; and the
suffixes of duplicates depend on file order, so deleting the first of two identical
messages gives the second the first one's UIDL (the client already holds an identical
copy, so at worst it skips a duplicate). X-UIDL values held by two messages are ignored
for both, for the same reason.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from typing import Final, NamedTuple

__all__ = [
    "HEADER_LIMIT",
    "UidlCandidate",
    "assign_unique_ids",
    "header_end",
    "is_pseudo_message",
    "uidl_candidate",
]

# The most header octets we look at: a header block longer than this (never seen in real
# mail: 256 KiB is some 3000 header lines) is digested up to here, which is still stable.
HEADER_LIMIT: Final = 256 * 1024

# Length of the digest-based UIDL: 128 bits of SHA-1, well inside RFC 1939's 70 octets
# even with a "-<n>" suffix.
DIGEST_LENGTH: Final = 32

# RFC 1939 section 7: "one to 70 characters in the range 0x21 to 0x7E".
_VALID_UIDL = re.compile(rb"[\x21-\x7e]{1,70}")

_X_UIDL = re.compile(rb"(?im)^x-uidl[ \t]*:[ \t]*([^\r\n]*)")

# Fields mail readers add or rewrite in place, with their continuation lines.
_VOLATILE_FIELDS = re.compile(
    rb"(?im)^(?:status|x-status|x-keywords|x-uid|x-imap|x-imapbase|content-length|lines)"
    rb"[ \t]*:[^\n]*\n?(?:[ \t][^\n]*\n?)*"
)

# UW IMAP (and Pine) keep folder state in a first pseudo message carrying an "X-IMAP:"
# field ("DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA"); it is not mail.
_X_IMAP = re.compile(rb"(?im)^x-imap[ \t]*:")


def header_end(data: bytes, start: int = 0) -> int:
    """Length of the header block at the start of `data` (up to and including the line end
    before the first empty line), or -1 if no empty line is in `data`. `start` is where a
    previous, unsuccessful search on a prefix of `data` left off."""
    if data.startswith((b"\n", b"\r\n")):
        return 0
    start = max(0, start - 2)
    lf_end = data.find(b"\n\n", start)
    # A CRLF empty line counts only if it starts before the first LF one.
    crlf_end = data.find(b"\n\r\n", start, len(data) if lf_end < 0 else lf_end + 2)
    found = crlf_end if crlf_end >= 0 else lf_end
    return found + 1 if found >= 0 else -1


class UidlCandidate(NamedTuple):
    """What one message offers as its UIDL."""

    x_uidl: str | None
    digest: str


def uidl_candidate(header: bytes) -> UidlCandidate:
    """The X-UIDL value (if valid) and the header digest of one message."""
    x_uidl = None
    match = _X_UIDL.search(header)
    if match is not None:
        value = match.group(1).strip()
        if _VALID_UIDL.fullmatch(value):
            x_uidl = value.decode("ascii")
    stable = _VOLATILE_FIELDS.sub(b"", header).replace(b"\r\n", b"\n")
    digest = hashlib.sha1(stable, usedforsecurity=False).hexdigest()[:DIGEST_LENGTH]
    return UidlCandidate(x_uidl=x_uidl, digest=digest)


def is_pseudo_message(header: bytes) -> bool:
    """Whether this header (of the first message) marks UW IMAP's folder-data message."""
    return _X_IMAP.search(header) is not None


def assign_unique_ids(candidates: Sequence[UidlCandidate]) -> list[str]:
    """One distinct UIDL per message, in file order (see the module docstring)."""
    uses = Counter(c.x_uidl for c in candidates if c.x_uidl is not None)
    taken = {x_uidl for x_uidl, count in uses.items() if count == 1}
    unique_ids: list[str] = []
    for candidate in candidates:
        if candidate.x_uidl is not None and uses[candidate.x_uidl] == 1:
            unique_ids.append(candidate.x_uidl)
            continue
        unique_id = candidate.digest
        suffix = 1
        while unique_id in taken:
            suffix += 1
            unique_id = f"{candidate.digest}-{suffix}"
        taken.add(unique_id)
        unique_ids.append(unique_id)
    return unique_ids
