"""Maildir file names and scanning (cr.yp.to/proto/maildir.html).

A Maildir message lives in new/ (unseen by any reader) or cur/ (seen), named
`<time>.<unique>.<host>` and, in cur/, followed by the info part `:2,<FLAGS>`. Readers such
as IMAP servers move files new/ -> cur/ and rewrite the flags, so everything that must stay
stable (the key, the UIDL) is taken from the base name: the file name up to the ":" info
separator. Dovecot and Postfix also put `,S=<size>` and `,W=<size with CRLF line ends>`
fields into the base name.

The listing snapshot itself is built by storage/maildir_snapshot.py. Everything here that
touches the file system blocks: call it from a worker thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import ClassVar

logger = logging.getLogger(__name__)

# The two directories that hold deliverable messages. tmp/ holds deliveries in progress and
# is never listed (Maildir spec: "a reader ... never looks in tmp").
MESSAGE_SUBDIRS = ("new", "cur")
ALL_SUBDIRS = ("new", "cur", "tmp")

# How a message file is opened for reading: a symlink planted in a user-writable maildrop
# must not make us read a file elsewhere.
MESSAGE_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW

# Maildir spec: "info" starts at the colon.
INFO_SEPARATOR = ":"

# RFC 1939 section 7 (UIDL): "The unique-id of a message is an arbitrary server-determined
# string, consisting of one to 70 characters in the range 0x21 to 0x7E".
UIDL_MAX_LENGTH = 70
_UIDL_CHARS = re.compile(r"[\x21-\x7e]{1,70}")

# `<seconds>` then "." (or the end) starts a Maildir name; `M<microseconds>` is the
# sub-second part of the unique field in names written by qmail-style, Dovecot and Postfix
# delivery agents. Bounded digit counts keep int() cheap on hostile names.
_DELIVERY_TIME = re.compile(r"(\d{1,18})(?:\Z|\.(?:[^.]*?M(\d{1,6})(?!\d))?)")
_VIRTUAL_SIZE = re.compile(r",W=(\d{1,18})(?:,|\Z)")


def is_valid_uidl(candidate: str) -> bool:
    """Whether `candidate` may be sent as a unique-id (RFC 1939 section 7)."""
    return _UIDL_CHARS.fullmatch(candidate) is not None


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
    if ",W=" not in base:
        return None  # the common case of names without it, without a regex
    match = _VIRTUAL_SIZE.search(base)
    return int(match.group(1)) if match else None


def delivery_time_ns(base: str) -> int | None:
    """Delivery time from the name: `<seconds>` plus the `M<usec>` field when present."""
    match = _DELIVERY_TIME.match(base)
    if match is None:
        return None
    seconds, micro = match.groups()
    return int(seconds) * 1_000_000_000 + (int(micro) * 1000 if micro else 0)


# The place of a message file, as the maildrop cache records it: "n" (new/) or "c" (cur/),
# then the info part of the file name (":2,<FLAGS>", or nothing).
_PLACE_SUBDIRS = {"n": "new", "c": "cur"}


def scan_places(maildir: str) -> dict[str, str]:
    """Map each base name in new/ and cur/ to its place, the cur/ one if there are two.

    One scandir per directory and no stat per file: a file's type comes with the directory
    entry. new/ is scanned before cur/ so that a message moved new/ -> cur/ during the scan
    is seen at least once; if it is seen twice, the cur/ place is the one still valid.
    Dotfiles and anything that is not a regular file (directories, symlinks, fifos) are not
    messages.
    """
    found: dict[str, str] = {}
    for sub in MESSAGE_SUBDIRS:
        letter = sub[0]
        with os.scandir(os.path.join(maildir, sub)) as entries:
            for entry in entries:
                name = entry.name
                if name[0] == "." or not entry.is_file(follow_symlinks=False):
                    continue
                base, colon, info = name.partition(INFO_SEPARATOR)
                found[base] = letter + colon + info
    return found


def place_path(maildir: str, base: str, place: str) -> str:
    """The path of the file with this base name at this place."""
    return f"{maildir}/{_PLACE_SUBDIRS[place[0]]}/{base}{place[1:]}"


def valid_places(places: list[str]) -> bool:
    """Whether every place is one scan_places could give (checked per distinct value:
    a maildrop has a handful of flag combinations)."""
    return all(
        place[:1] in _PLACE_SUBDIRS
        and (len(place) == 1 or place[1] == INFO_SEPARATOR)
        and "/" not in place
        for place in set(places)
    )


class MessagePaths:
    """Where each listed message's file is, from its place; a message found elsewhere
    later (another agent moved it) is remembered by path."""

    __slots__ = ("_maildir", "_moved", "_names", "_places", "_rows")

    def __init__(self, maildir: str, names: list[str], places: list[str]) -> None:
        self._maildir = maildir
        self._names = names
        self._places = places
        self._rows: dict[str, int] | None = None  # made at the first lookup
        self._moved: dict[str, str] = {}

    def __getitem__(self, key: str) -> str:
        """The path of `key`; KeyError if it is not listed."""
        moved = self._moved.get(key)
        if moved is not None:
            return moved
        if self._rows is None:
            self._rows = dict(zip(self._names, range(len(self._names)), strict=True))
        return place_path(self._maildir, key, self._places[self._rows[key]])

    def __setitem__(self, key: str, path: str) -> None:
        self.__getitem__(key)  # KeyError: only listed messages move
        self._moved[key] = path


@dataclass(frozen=True, slots=True)
class DirStamps:
    """new/ and cur/ as last listed: their mtimes and inodes, and when they were taken.

    Every create, rename or unlink in a directory sets its mtime to the current time, so
    while both mtimes (and inodes) are unchanged the listing is too, and the cache can
    stand in for the scan (Dovecot trusts its index the same way). Only stamps taken when
    the last change was at least SETTLE_NS old are trusted: a change in the same clock
    tick as the stamp could leave the mtime unchanged.
    """

    new_mtime_ns: int
    new_inode: int
    cur_mtime_ns: int
    cur_inode: int
    taken_ns: int

    SETTLE_NS: ClassVar[int] = 2_000_000_000

    @classmethod
    def take(cls, maildir: str) -> DirStamps:
        """Stamp new/ and cur/ now. Raises OSError."""
        taken = time.time_ns()
        new = os.stat(os.path.join(maildir, "new"))
        cur = os.stat(os.path.join(maildir, "cur"))
        return cls(new.st_mtime_ns, new.st_ino, cur.st_mtime_ns, cur.st_ino, taken)

    @property
    def settled(self) -> bool:
        return max(self.new_mtime_ns, self.cur_mtime_ns) < self.taken_ns - self.SETTLE_NS

    def still_valid(self, now: DirStamps) -> bool:
        """Whether these (recorded) stamps still describe the directories stamped `now`."""
        return self.settled and self.same_directories(now)

    def same_directories(self, other: DirStamps) -> bool:
        return (
            self.new_mtime_ns == other.new_mtime_ns
            and self.new_inode == other.new_inode
            and self.cur_mtime_ns == other.cur_mtime_ns
            and self.cur_inode == other.cur_inode
        )

    def format(self) -> str:
        return (
            f"{self.new_mtime_ns}:{self.new_inode}:{self.cur_mtime_ns}:{self.cur_inode}:"
            f"{self.taken_ns}"
        )

    @classmethod
    def parse(cls, text: str) -> DirStamps | None:
        """Stamps as format() wrote them; None for "-" or anything else."""
        fields = text.split(":")
        if len(fields) != 5 or not all(f.isascii() and f.isdigit() and len(f) < 24 for f in fields):
            return None
        return cls(*map(int, fields))


def scan_messages(maildir: str) -> dict[str, list[str]]:
    """Like scan_paths, but every path of each base name, the cur/ one first."""
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


def read_control_file(path: str, limit: int) -> bytes | None:
    """A small file that other mail servers keep in the maildrop (dovecot-uidlist,
    courierpop3dsizelist): its bytes, or None if it is missing or over `limit` octets
    (logged). A symlink is refused (ELOOP): the maildrop may be writable by its user.
    Raises OSError for other failures."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            logger.warning("ignoring %r: %d octets is too big", path, size)
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
