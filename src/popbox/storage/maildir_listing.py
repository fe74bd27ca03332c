"""Maildir file names and the listing snapshot (cr.yp.to/proto/maildir.html).

A Maildir message lives in new/ (unseen by any reader) or cur/ (seen), named
`<time>.<unique>.<host>` and, in cur/, followed by the info part `:2,<FLAGS>`. Readers such
as IMAP servers move files new/ -> cur/ and rewrite the flags, so everything that must stay
stable (the key, the UIDL) is taken from the base name: the file name up to the ":" info
separator. Dovecot and Postfix also put `,S=<size>` and `,W=<size with CRLF line ends>`
fields into the base name.

Everything here is blocking file-system work: call it from a worker thread.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass

from popbox.storage.base import MessageInfo, StoreError
from popbox.storage.octets import wire_octets_of_fd

# The two directories that hold deliverable messages. tmp/ holds deliveries in progress and
# is never listed (Maildir spec: "a reader ... never looks in tmp").
MESSAGE_SUBDIRS = ("new", "cur")
ALL_SUBDIRS = ("new", "cur", "tmp")

# Maildir spec: "info" starts at the colon.
INFO_SEPARATOR = ":"

# RFC 1939 section 7 (UIDL): "The unique-id of a message is an arbitrary server-determined
# string, consisting of one to 70 characters in the range 0x21 to 0x7E".
UIDL_MAX_LENGTH = 70
_UIDL_CHARS = re.compile(r"[\x21-\x7e]{1,70}")

# `<seconds>` then "." (or the end) starts a Maildir name; `M<microseconds>` is the
# sub-second part of the unique field in names written by qmail-style, Dovecot and Postfix
# delivery agents. Bounded digit counts keep int() cheap on hostile names.
_DELIVERY_SECONDS = re.compile(r"(\d{1,18})(?:\.|\Z)")
_MICROSECONDS = re.compile(r"M(\d{1,6})(?!\d)")
_VIRTUAL_SIZE = re.compile(r"W=(\d{1,18})")

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


def base_name(file_name: str) -> str:
    """The Maildir base name: the file name up to the info separator."""
    return file_name.partition(INFO_SEPARATOR)[0]


def unique_id_for(base: str) -> str:
    """The UIDL for a base name (RFC 1939 section 7): the name itself when it qualifies,
    else the hex SHA-1 of its file-system bytes (40 characters, stable forever)."""
    if _UIDL_CHARS.fullmatch(base):
        return base
    return hashlib.sha1(os.fsencode(base)).hexdigest()


def virtual_size(base: str) -> int | None:
    """The `,W=<n>` field (size with CRLF line ends) of a Dovecot/Postfix name, if any."""
    for field in base.split(",")[1:]:
        match = _VIRTUAL_SIZE.fullmatch(field)
        if match:
            return int(match.group(1))
    return None


def delivery_time_ns(base: str) -> int | None:
    """Delivery time from the name: `<seconds>` plus the `M<usec>` field when present."""
    match = _DELIVERY_SECONDS.match(base)
    if match is None:
        return None
    seconds = int(match.group(1))
    unique = base[match.end() :].split(".", 1)[0]
    usec = _MICROSECONDS.search(unique)
    micro = int(usec.group(1)) if usec else 0
    return seconds * 1_000_000_000 + micro * 1000


def scan_messages(maildir: str) -> dict[str, list[str]]:
    """Map each base name in new/ and cur/ to its paths, the cur/ one first.

    new/ is scanned before cur/ so that a message moved new/ -> cur/ during the scan is seen
    at least once; if it is seen twice, the cur/ path is the one still valid. Dotfiles and
    anything that is not a regular file (directories, symlinks, fifos) are not messages.
    """
    found: dict[str, list[str]] = {}
    for sub in MESSAGE_SUBDIRS:
        with os.scandir(os.path.join(maildir, sub)) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                found.setdefault(base_name(entry.name), []).insert(0, entry.path)
    return found


def locate_message(maildir: str, key: str) -> str | None:
    """Where the message with base name `key` is now (another agent may have moved it)."""
    paths = scan_messages(maildir).get(key)
    return paths[0] if paths else None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The listing fixed at open time and where each message was found."""

    listing: tuple[MessageInfo, ...]
    paths: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Measured:
    delivered_ns: int
    base: str
    path: str
    octets: int


def take_snapshot(maildir: str) -> Snapshot:
    """List the maildrop, oldest delivery first (message 1). Raises StoreError."""
    try:
        measured = [
            found
            for base, paths in scan_messages(maildir).items()
            if (found := _measure(base, paths)) is not None
        ]
    except OSError as exc:
        raise StoreError(f"cannot list maildir {maildir!r}: {exc}") from exc
    measured.sort(key=lambda m: (m.delivered_ns, m.base))
    listing = tuple(
        MessageInfo(key=m.base, octets=m.octets, unique_id=unique_id_for(m.base)) for m in measured
    )
    return Snapshot(listing=listing, paths={m.base: m.path for m in measured})


def _measure(base: str, paths: list[str]) -> _Measured | None:
    """Size and date one message; None if it vanished meanwhile or is not a message."""
    for path in paths:
        try:
            return _measure_file(base, path)
        except FileNotFoundError:
            continue  # deleted or moved since the scan: try the other path, if any
    return None


def _measure_file(base: str, path: str) -> _Measured | None:
    octets = virtual_size(base)
    delivered = delivery_time_ns(base)
    if octets is not None and delivered is not None:
        # The name says it all: no need to touch the file.
        return _Measured(delivered, base, path, octets)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None  # replaced by a symlink since the scan: not a message
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return None
        if octets is None:
            octets = wire_octets_of_fd(fd)
    finally:
        os.close(fd)
    if delivered is None:
        # Not a Maildir-style name: fall back to the modification time.
        delivered = status.st_mtime_ns
    return _Measured(delivered, base, path, octets)
