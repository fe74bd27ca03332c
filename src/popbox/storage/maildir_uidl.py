"""Which unique-id (RFC 1939 section 7) each Maildir message gets, and in which order the
listing shows the messages.

A message's candidates, first usable one wins:
1. with xuidl: the message's own `X-UIDL:` header (what qpopper-era servers and some
   migration tools left behind);
2. with uidl_format "dovecot" / "courier": the UIDL that server handed out, from its
   dovecot-uidlist / courierpop3dsizelist (storage/uidl_dovecot.py, uidl_courier.py);
3. popbox's default: the base name (storage/maildir_listing.py unique_id_for), then, if
   that is taken, SHA-1 digests of it.

"Usable" means a valid unique-id not yet given to another message of the maildrop. The
cache (storage/maildir_cache.py) keeps what was handed out, so a message's unique-id never
changes; messages already listed keep theirs and a newcomer yields on a collision.

Every candidate is derived from the message, its name or the migration file, never from a
counter, so a lost cache gives the same unique-ids again. That is also why messages Dovecot
or Courier never saw do not continue their numbering: a counter kept only in popbox's cache
could not be derived again, and the other server, run again later, would hand the same
numbers to different messages. They get popbox's default instead, and a default that looks
like the other server's own format (16 hex digits for Dovecot, "UID<n>" for Courier) is
replaced by its SHA-1 digest, so the two can never hand out one UIDL for two messages.

Order: messages the migration source knows come first, in that server's own order (Dovecot:
POP3 order field, then UID), then the rest by delivery time, as popbox lists them.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from popbox.storage.maildir_listing import is_valid_uidl, unique_id_for
from popbox.storage.uidl_courier import read_courier_sizelist
from popbox.storage.uidl_dovecot import DovecotUidlist, read_dovecot_uidlist

UidlFormat = Literal["popbox", "dovecot", "courier"]
UIDL_FORMATS: tuple[UidlFormat, ...] = ("popbox", "dovecot", "courier")

# Listing ranks: a message's place before its delivery time is looked at. Dovecot's POP3
# order numbers and UIDs are 32-bit (RFC 3501 section 2.3.1.1), so they fit below these.
_RANK_UID_BASE = 2**32
RANK_UNRANKED = 2**33

# UIDLs the migration source's own format can produce for messages it sees later.
_DOVECOT_OWN = re.compile(r"[0-9a-fA-F]{16}")
_COURIER_OWN = re.compile(r"UID\d+(?:-\d+)?")


@dataclass(frozen=True, slots=True)
class UidlSettings:
    """How unique-ids are chosen; `tag` is recorded in the cache with them."""

    format: UidlFormat = "popbox"
    xuidl: bool = False

    def __post_init__(self) -> None:
        if self.format not in UIDL_FORMATS:
            raise ValueError(f"unknown uidl_format {self.format!r}")

    @property
    def tag(self) -> str:
        return self.format + ("+xuidl" if self.xuidl else "")


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the migration source knows of one message."""

    unique_id: str | None = None
    rank: int = RANK_UNRANKED
    octets: int | None = None  # the wire size, when the source recorded it


_UNKNOWN = SourceInfo()


class UidlSources:
    """The migration source of one maildrop, read once per open, only if needed."""

    def __init__(self, settings: UidlSettings, maildir: str) -> None:
        self.settings = settings
        self._dovecot: DovecotUidlist | None = None
        self._courier: dict[str, str] = {}
        if settings.format == "dovecot":
            self._dovecot = read_dovecot_uidlist(maildir)
        elif settings.format == "courier":
            self._courier = read_courier_sizelist(maildir) or {}

    def lookup(self, base: str) -> SourceInfo:
        if self._dovecot is not None:
            record = self._dovecot.records.get(base)
            if record is None:
                return _UNKNOWN
            rank = _RANK_UID_BASE + record.uid
            if record.pop3_order is not None and record.pop3_order < _RANK_UID_BASE:
                rank = record.pop3_order
            return SourceInfo(self._dovecot.unique_id(base, record), rank, record.vsize)
        found = self._courier.get(base)
        return _UNKNOWN if found is None else SourceInfo(unique_id=found)


def _is_foreign(settings: UidlSettings, candidate: str) -> bool:
    if settings.format == "dovecot":
        return _DOVECOT_OWN.fullmatch(candidate) is not None
    if settings.format == "courier":
        return _COURIER_OWN.fullmatch(candidate) is not None
    return False


def default_ids(settings: UidlSettings, base: str) -> Iterator[str]:
    """popbox's own candidates for `base`, endless: the base name (if it qualifies and
    cannot be mistaken for the migration source's format), then SHA-1 digests."""
    first = unique_id_for(base)
    if not _is_foreign(settings, first):
        yield first
    raw = os.fsencode(base)
    yield hashlib.sha1(raw).hexdigest()
    for number in itertools.count(1):
        yield hashlib.sha1(raw + b"\0%d" % number).hexdigest()


class UidlAllocator:
    """Hands out unique-ids, each at most once per maildrop."""

    def __init__(self, settings: UidlSettings, taken: Iterable[str] = ()) -> None:
        self.settings = settings
        self.used: set[str] = set(taken)

    def assign(self, base: str, preferred: Iterable[str | None]) -> str:
        """The first of `preferred`, then of popbox's defaults, that is valid and free."""
        for candidate in preferred:
            if candidate is not None and self._claim(candidate):
                return candidate
        first = unique_id_for(base)  # the usual outcome, without the generator below
        if not _is_foreign(self.settings, first) and self._claim(first):
            return first
        for candidate in default_ids(self.settings, base):
            if self._claim(candidate):
                return candidate
        raise AssertionError("unreachable: default_ids never ends")  # pragma: no cover

    def _claim(self, candidate: str) -> bool:
        if candidate in self.used or not is_valid_uidl(candidate):
            return False
        self.used.add(candidate)
        return True
