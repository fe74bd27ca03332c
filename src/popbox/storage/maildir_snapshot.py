"""The listing snapshot of a Maildir (RFC 1939 section 5), fixed at open time.

While new/ and cur/ have not changed since the maildrop cache (storage/maildir_cache.py)
was written (their mtimes and inodes, storage/maildir_listing.py DirStamps), opening reads
that one file and lists nothing. Otherwise it lists new/ and cur/ (one scandir each, no
stat per file) and takes everything else from the cache. Only messages the cache does not
know yet are looked at more closely:
- size: the `,W=` field of the name, else the W field of Dovecot's uidlist, else a count
  of the file (storage/maildir_measure.py; a big file is counted on the event loop
  instead, storage/maildir_count.py: take_snapshot raises CountFirst, and is called again
  with the counts). `,S=` is the stored size, which differs from the wire size by the
  bare LFs, so it cannot spare the count. A size a RETR found wrong is counted and
  kept in the cache instead (MaildropCache.measured), so it is not taken again;
- delivery time: from the name, else the file's mtime;
- unique-id and order: storage/maildir_uidl.py.
What was learnt is written back, once, if anything changed.

Everything here blocks: call it from a worker thread, with the maildrop lock held
(cached_snapshot: or on the event loop, storage/maildir_inline.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from popbox.storage.base import MessageTable, StoreError
from popbox.storage.maildir_cache import CacheTable, load_cache, write_cache
from popbox.storage.maildir_listing import (
    DirStamps,
    MessagePaths,
    delivery_time_ns,
    place_path,
    scan_places,
    virtual_size,
)
from popbox.storage.maildir_measure import measure_file
from popbox.storage.maildir_uidl import UidlAllocator, UidlSettings, UidlSources

logger = logging.getLogger(__name__)


class MaildropCache:
    """The cache table of the messages listed at open, and the file it is saved to.
    Methods block; they are safe to call from several threads."""

    def __init__(self, maildir: str, table: CacheTable) -> None:
        self.maildir = maildir
        self._table = table
        self._mutex = threading.Lock()

    def __len__(self) -> int:
        return len(self._table)

    def save(self) -> None:
        """Write the cache file now. Raises OSError."""
        with self._mutex:
            write_cache(self.maildir, self._table)

    def record_retrievals(self, keys: Iterable[str], when: float) -> bool:
        """Set the first retrieval time where there is none; True if any was set."""
        wanted = set(keys)
        changed = False
        with self._mutex:
            times = self._table.first_retrieved
            for row, name in enumerate(self._table.names):
                if name in wanted and times[row] is None:
                    times[row] = when
                    changed = True
        return changed

    def measured(self, key: str, octets: int) -> bool:
        """Set the wire size of a listed message (counted); True if it changed."""
        with self._mutex:
            table = self._table
            for row, name in enumerate(table.names):
                if name == key and table.octets[row] != octets:
                    table.octets[row] = octets
                    return True
        return False

    def forget(self, keys: Iterable[str]) -> bool:
        """Drop the entries of removed messages; True if any was dropped."""
        gone = set(keys)
        with self._mutex:
            table = self._table
            rows = [row for row, name in enumerate(table.names) if name not in gone]
            if len(rows) == len(table):
                return False
            self._table = table.select(rows)
            self._table.stamps = None  # the unlinks changed new/ and cur/
            return True


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The listing fixed at open time, where each message was found, and the cache."""

    listing: MessageTable
    paths: MessagePaths
    cache: MaildropCache


@dataclass(slots=True)
class _Newcomer:
    """A message the cache does not know (or not under these settings)."""

    name: str
    octets: int
    delivered_ns: int
    rank: int
    preferred: tuple[str | None, ...]
    first_retrieved: float | None

    def order_key(self) -> tuple[int, int, str]:
        return self.rank, self.delivered_ns, self.name


# What a cache made under other settings (or a duplicate row) still tells: octets,
# delivered_ns, first_retrieved.
_Known = tuple[int, int, float | None]


class CountFirst(Exception):
    """Messages too big to count here: their paths, by name. Count them and call
    take_snapshot again with the counts."""

    def __init__(self, paths: dict[str, str]) -> None:
        super().__init__(f"{len(paths)} messages to count first")
        self.paths = paths


def take_snapshot(
    maildir: str,
    settings: UidlSettings | None = None,
    *,
    counted: Mapping[str, int] | None = None,
    count_up_to: int | None = None,
) -> Snapshot:
    """List the maildrop: the migration source's order first (if any), then oldest delivery
    first. `counted`: wire sizes already counted, by name. A new message of more than
    `count_up_to` octets with no size known raises CountFirst (None: count them all here).
    Raises StoreError."""
    settings = settings or UidlSettings()
    try:
        stamps = DirStamps.take(maildir)  # before the scan: a change during it shows later
    except OSError as exc:
        raise StoreError(f"cannot list maildir {maildir!r}: {exc}") from exc
    loaded = load_cache(maildir)
    if loaded is not None and _still_current(loaded, settings, stamps):
        return _snapshot(maildir, loaded)
    try:
        found = scan_places(maildir)
    except OSError as exc:
        raise StoreError(f"cannot list maildir {maildir!r}: {exc}") from exc
    known: dict[str, _Known] = {}
    if loaded is not None and loaded.settings == settings.tag:
        table = loaded
    else:
        table = CacheTable(settings.tag)
        if loaded is not None:
            known = _facts(loaded, range(len(loaded)))
    changed = loaded is None or table is not loaded
    listed = set(table.names)
    if not found.keys() >= listed:
        rows = [row for row, name in enumerate(table.names) if name in found]
        table, changed = table.select(rows), True
    if len(set(table.unique_ids)) != len(table):
        table, known = _drop_repeated_ids(table, known)
    listed = set(table.names) if len(listed) != len(table) else listed
    arrivals = [name for name in found if name not in listed] if len(found) > len(table) else []
    if arrivals:
        changed = True
        try:
            newcomers = _learn(
                maildir,
                settings,
                found,
                arrivals,
                known,
                counted=counted or {},
                count_up_to=count_up_to,
            )
        except OSError as exc:
            raise StoreError(f"cannot read maildir {maildir!r}: {exc}") from exc
        table = _merge(table, newcomers, UidlAllocator(settings, table.unique_ids))
    places = [found[name] for name in table.names]
    if places != table.places:
        table.places, changed = places, True
    if stamps.settled and (table.stamps is None or not table.stamps.still_valid(stamps)):
        changed = True  # worth writing: the next open can skip the scan
    table.stamps = stamps
    return _snapshot(maildir, table, save=changed)


def cached_snapshot(maildir: str, settings: UidlSettings, up_to: int) -> Snapshot | None:
    """take_snapshot's short way alone: the snapshot from the maildrop cache, if it may
    stand in for listing new/ and cur/ (two stat(2)s and a read of the cache file) and is
    at most `up_to` octets; None if the maildrop must be listed, if the cache is bigger,
    or if anything failed (nothing is logged: take_snapshot then does it all, and
    reports)."""
    try:
        stamps = DirStamps.take(maildir)
    except OSError:
        return None
    loaded = load_cache(maildir, warn=False, up_to=up_to)
    if loaded is None or not _still_current(loaded, settings, stamps):
        return None
    return _snapshot(maildir, loaded)


def _still_current(table: CacheTable, settings: UidlSettings, stamps: DirStamps) -> bool:
    """Whether the cache may stand in for listing new/ and cur/: same settings, every
    place known, and both directories unchanged since the cache's own listing."""
    return (
        table.settings == settings.tag
        and table.stamps is not None
        and len(table.places) == len(table)
        and table.stamps.still_valid(stamps)
        # Names are unique (the cache checks): unique-ids that are the names are too.
        and (table.unique_ids == table.names or len(set(table.unique_ids)) == len(table))
    )


def _snapshot(maildir: str, table: CacheTable, *, save: bool = False) -> Snapshot:
    """The snapshot of `table` (columns copied: the cache changes during the session)."""
    cache = MaildropCache(maildir, table)
    if save:
        try:
            cache.save()
        except OSError as exc:
            logger.warning("cannot write maildrop cache in %r: %s", maildir, exc)
    names = list(table.names)
    listing = MessageTable(
        names, list(table.octets), list(table.unique_ids), list(table.first_retrieved)
    )
    return Snapshot(listing, MessagePaths(maildir, names, list(table.places)), cache)


def _facts(table: CacheTable, rows: Iterable[int]) -> dict[str, _Known]:
    return {
        table.names[row]: (table.octets[row], table.delivered_ns[row], table.first_retrieved[row])
        for row in rows
    }


def _drop_repeated_ids(
    table: CacheTable, known: dict[str, _Known]
) -> tuple[CacheTable, dict[str, _Known]]:
    """A hand-edited cache gave one unique-id twice: the later message yields and is
    treated as new (its size and times are kept)."""
    seen: set[str] = set()
    keep: list[int] = []
    repeated: list[int] = []
    for row, unique_id in enumerate(table.unique_ids):
        (repeated if unique_id in seen else keep).append(row)
        seen.add(unique_id)
    logger.warning("maildrop cache repeats %d unique-ids; reassigning them", len(repeated))
    return table.select(keep), {**known, **_facts(table, repeated)}


def _learn(
    maildir: str,
    settings: UidlSettings,
    found: dict[str, str],
    arrivals: list[str],
    known: dict[str, _Known],
    *,
    counted: Mapping[str, int],
    count_up_to: int | None,
) -> list[_Newcomer]:
    """Size, time, rank and preferred unique-ids of the messages new to the cache. A
    message that vanished since the scan is left out. Raises CountFirst (after looking
    at all of them) if some are too big to count here."""
    sources = UidlSources(settings, maildir)
    rescanned: dict[str, str] | None = None
    newcomers = []
    uncounted: dict[str, str] = {}
    for name in arrivals:
        info = sources.lookup(name)
        facts = known.get(name)
        octets: int | None
        delivered: int | None
        if facts is not None:
            octets, delivered, first = facts
        else:
            octets = virtual_size(name)
            octets = info.octets if octets is None else octets
            octets = counted.get(name) if octets is None else octets
            delivered, first = delivery_time_ns(name), None
        need_octets, need_mtime = octets is None, delivered is None
        measured = None
        try:
            measured = measure_file(
                place_path(maildir, name, found[name]),
                octets=need_octets,
                mtime=need_mtime,
                x_uidl=settings.xuidl,
                count_up_to=count_up_to,
            )
        except FileNotFoundError:
            # Moved (new/ -> cur/, a flag change) or deleted since the scan: one rescan
            # for all such messages, then give up on those still missing.
            if rescanned is None:
                rescanned = scan_places(maildir)
            if name in rescanned:
                found[name] = rescanned[name]
                try:
                    measured = measure_file(
                        place_path(maildir, name, found[name]),
                        octets=need_octets,
                        mtime=need_mtime,
                        x_uidl=settings.xuidl,
                        count_up_to=count_up_to,
                    )
                except FileNotFoundError:
                    measured = None
        if measured is None:
            continue  # vanished, or not a regular file after all
        if need_octets and measured.octets is None:
            uncounted[name] = place_path(maildir, name, found[name])
            continue
        octets = octets if measured.octets is None else measured.octets
        delivered = delivered if measured.mtime_ns is None else measured.mtime_ns
        if octets is None or delivered is None:  # pragma: no cover - measure_file was asked
            raise AssertionError("measure_file did not measure")
        preferred = (measured.x_uidl, info.unique_id)
        newcomers.append(_Newcomer(name, octets, delivered, info.rank, preferred, first))
    if uncounted:
        raise CountFirst(uncounted)
    return newcomers


def _merge(table: CacheTable, newcomers: list[_Newcomer], allocator: UidlAllocator) -> CacheTable:
    """Give the newcomers unique-ids, in listing order, and put them in their place."""
    newcomers.sort(key=_Newcomer.order_key)
    last = (table.ranks[-1], table.delivered_ns[-1], table.names[-1]) if len(table) else None
    table.names += [n.name for n in newcomers]
    table.octets += [n.octets for n in newcomers]
    table.delivered_ns += [n.delivered_ns for n in newcomers]
    table.ranks += [n.rank for n in newcomers]
    table.unique_ids += [allocator.assign(n.name, n.preferred) for n in newcomers]
    table.first_retrieved += [n.first_retrieved for n in newcomers]
    if last is None or not newcomers or newcomers[0].order_key() >= last:
        return table  # the usual case: newcomers are the newest messages
    keys = list(zip(table.ranks, table.delivered_ns, table.names, strict=True))
    return table.select(sorted(range(len(keys)), key=keys.__getitem__))
