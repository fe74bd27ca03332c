"""The maildrop cache `popbox-cache` (storage/maildir_cache.py): what it stores, that it is
written only when something changed, that a lost or corrupt one is rebuilt with the same
unique-ids, first retrieval times (RFC 2449 section 6.7 EXPIRE), and sizes from ,W=."""

from __future__ import annotations

import asyncio
import os
import time
import types
import zlib
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from popbox.storage import maildir_listing
from popbox.storage.base import MessageInfo, StoreError
from popbox.storage.maildir import MaildirMaildrop, MaildirStore
from popbox.storage.maildir_cache import (
    CACHE_FILE_NAME,
    CacheTable,
    CorruptCache,
    format_cache,
    load_cache,
    parse_cache,
)
from popbox.storage.maildir_listing import DirStamps

_T = TypeVar("_T")


def run(coro: Awaitable[_T]) -> _T:
    async def main() -> _T:
        return await coro

    return asyncio.run(main())


def maildir_of(tmp_path: Path, user: str = "alice") -> Path:
    maildir = tmp_path / user / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    return maildir


def listing(tmp_path: Path, user: str = "alice") -> tuple[MessageInfo, ...]:
    async def scenario() -> tuple[MessageInfo, ...]:
        maildrop = await MaildirStore(str(tmp_path / "%u" / "Maildir")).open(user)
        await maildrop.close()
        return tuple(maildrop.listing)

    return run(scenario())


async def opened(tmp_path: Path) -> MaildirMaildrop:
    return await MaildirStore(str(tmp_path / "%u" / "Maildir")).open("alice")


def corpus(maildir: Path) -> dict[str, bytes]:
    """Names in every shape the listing handles, with their contents."""
    messages = {
        "new/1700000001.M1P10.host": b"Subject: plain LF\n\nbody\n",
        "new/1700000002.M2P10.host,S=22,W=24": b"Subject: with W\n\nbody\n",
        "cur/1700000003.M3P10.host:2,S": b"Subject: seen\r\n\r\nCRLF body\r\n",
        "cur/1700000004.M4P10.host,S=9:2,RS": b"no final\nnewline",
        "new/1700000005.M5P10.host with space": b"odd name\n",
        "cur/legacy-name:2,": b"no time in the name\n",
    }
    for name, data in messages.items():
        (maildir / name).write_bytes(data)
    os.utime(maildir / "cur/legacy-name:2,", (1_600_000_000, 1_600_000_000))
    return messages


# --- file format ---------------------------------------------------------------------------


ODD = CacheTable(
    "dovecot+xuidl",
    names=["1700000001.M1P1.host,S=5,W=6", "back\\slash\ttab\nnewline\rcr", "caf\udce9"],
    octets=[6, 0, 123_456_789_012],
    delivered_ns=[1_700_000_001_000_000_000, 0, 5],
    ranks=[2**32 + 1, 2**33, 7],
    unique_ids=["000000016b08c270", "x" * 70, "!~"],
    first_retrieved=[None, 1_800_000_000.25, 0.0],
    places=["n", "c:2,S", "c:2,"],
    stamps=DirStamps(1, 2, 3, 4, 5),
)


def test_format_round_trip_with_odd_names() -> None:
    data = format_cache(ODD)
    assert data.startswith(b"popbox-cache\t2\tdovecot+xuidl\t3\t1:2:3:4:5\noctets 24\n")
    assert (
        b"\nnames 59\n1700000001.M1P1.host,S=5,W=6\0back\\slash\ttab\nnewline\rcr\0caf\xe9" in data
    )
    assert b"\nplaces 12\nn\0c:2,S\0c:2,\n" in data
    assert data.endswith(b"\nend %08x\n" % zlib.crc32(data[: -len("end 12345678\n")]))
    assert parse_cache(data) == ODD


def test_a_unique_id_equal_to_the_name_is_stored_once() -> None:
    table = CacheTable(
        "popbox", ["a", "b"], [1, 2], [3, 4], [5, 6], ["a", "ub"], [None, 1.5], ["n", "c"]
    )
    data = format_cache(table)
    assert b"\nuidl 3\n\0ub\n" in data
    assert parse_cache(data) == table
    same = CacheTable(
        "popbox", ["a", "b"], [1, 2], [3, 4], [5, 6], ["a", "b"], [None, None], ["n", "c"]
    )
    parsed = parse_cache(format_cache(same))
    assert parsed == same
    assert parsed.unique_ids is not parsed.names  # equal, but never one list


def test_empty_table_round_trip() -> None:
    table = CacheTable("popbox")
    data = format_cache(table)
    assert data.startswith(b"popbox-cache\t2\tpopbox\t0\t-\noctets 0\n\ndelivered 0\n\nrank 0\n\n")
    assert parse_cache(data) == table


def _resealed(data: bytes) -> bytes:
    """`data` with its end line recomputed: damage that passes the checksum."""
    body = data[: data.rindex(b"end ")]
    return body + b"end %08x\n" % zlib.crc32(body)


GOOD = format_cache(
    CacheTable(
        "popbox", ["a", "b"], [1, 2], [3, 4], [5, 6], ["ua", "ub"], [None, 1.5], ["n", "c:2,S"]
    )
)


@pytest.mark.parametrize(
    "broken",
    [
        b"",
        GOOD[:-1],  # cut inside the end line
        GOOD[: GOOD.rindex(b"end ")],  # cut before it
        GOOD.replace(b"ua", b"uA"),  # checksum mismatch
        _resealed(GOOD.replace(b"popbox-cache\t2", b"popbox-cache\t3")),  # another version
        _resealed(GOOD.replace(b"\t2\t-", b"\t3\t-", 1)),  # count disagrees
        _resealed(GOOD.replace(b"octets 16\n", b"octets 15\n")),
        _resealed(GOOD.replace(b"\x02\x00\x00\x00\x00\x00\x00\x00", b"\xff" * 8, 1)),
        _resealed(GOOD.replace(b"uidl 5\nua\0ub", b"uidl 5\nua\0u\x7f")),
        _resealed(GOOD.replace(b"uidl 5\nua\0ub", b"uidl 5\nua\0\r\n")),
        _resealed(GOOD.replace(b"uidl 5\nua\0ub", b"uidl 75\nua\0" + b"u" * 71)),
        _resealed(GOOD.replace(b"names 3\na\0b", b"names 3\na\0a")),  # a name twice
        _resealed(GOOD.replace(b"names 3\na\0b", b"names 4\n../b")),  # a slash
        _resealed(GOOD.replace(b"names 3\na\0b", b"names 2\na\0")),  # an empty name
        _resealed(GOOD.replace(b"places 7\nn\0c:2,S", b"places 7\nx\0c:2,S")),
        _resealed(GOOD.replace(b"places 7\nn\0c:2,S", b"places 7\nn\0c/2,S")),
        _resealed(GOOD.replace(b"places 7\nn\0c:2,S", b"places 7\nnx\0:2,S")),
        _resealed(GOOD.replace(b"\xf8\x3f", b"\xf8\xbf")),  # retrieved 1.5 -> -1.5
        _resealed(GOOD.replace(b"\x00\x00\xf8\x3f", b"\x00\x00\xf0\x7f")),  # infinity
        _resealed(GOOD.replace(b"rank 16", b"ranks 16")),
        _resealed(GOOD.replace(b"places 7\nn\0c:2,S\n", b"places 7\nn\0c:2,S\nextra")),
    ],
)
def test_corrupt_files_are_refused(broken: bytes) -> None:
    with pytest.raises(CorruptCache):
        parse_cache(broken)


def test_a_version_1_cache_is_still_read() -> None:
    """An upgrade keeps the retrieval times recorded by the text format of version 1."""
    text = (
        "popbox-cache\t1\tpopbox\t2\noctets\t1 2\ndelivered\t3 4\nrank\t5 6\n"
        "uidl\tua ub\nretrieved\t- 1.5\nnames\na\nb\\tc\nend\n"
    )
    table = parse_cache(text.encode())
    assert table == CacheTable(
        "popbox", ["a", "b\tc"], [1, 2], [3, 4], [5, 6], ["ua", "ub"], [None, 1.5]
    )
    assert table.places == [] and table.stamps is None  # the next open lists new/ and cur/


# --- what open stores and when it writes ----------------------------------------------------


def test_first_open_writes_the_cache_in_listing_order(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)
    infos = listing(tmp_path)
    table = load_cache(str(maildir))
    assert table is not None
    assert table.settings == "popbox"
    assert table.names == [m.key for m in infos]
    assert table.names == [
        "legacy-name",  # mtime 1600000000: the oldest
        "1700000001.M1P10.host",
        "1700000002.M2P10.host,S=22,W=24",
        "1700000003.M3P10.host",
        "1700000004.M4P10.host,S=9",
        "1700000005.M5P10.host with space",
    ]
    assert table.octets == [21, 27, 24, 28, 19, 10]
    assert table.delivered_ns == [
        1_600_000_000_000_000_000,
        1_700_000_001_000_001_000,
        1_700_000_002_000_002_000,
        1_700_000_003_000_003_000,
        1_700_000_004_000_004_000,
        1_700_000_005_000_005_000,
    ]
    assert table.ranks == [2**33] * 6
    assert table.unique_ids == [m.unique_id for m in infos]
    assert table.first_retrieved == [None] * 6
    assert (maildir / CACHE_FILE_NAME).stat().st_mode & 0o777 == 0o600


def settle(maildir: Path, age: float = 10.0) -> None:
    """Date new/ and cur/ back, as if their last change were `age` seconds ago."""
    when = time.time() - age
    for sub in ("new", "cur"):
        os.utime(maildir / sub, (when, when))


def test_unchanged_maildrop_does_not_rewrite_the_cache(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)
    settle(maildir)
    listing(tmp_path)
    before = (maildir / CACHE_FILE_NAME).stat()
    listing(tmp_path)
    after = (maildir / CACHE_FILE_NAME).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not (maildir / (CACHE_FILE_NAME + ".tmp")).exists()


def test_a_move_or_flag_change_updates_only_the_place(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)
    first = listing(tmp_path)
    (maildir / "new/1700000001.M1P10.host").rename(maildir / "cur/1700000001.M1P10.host:2,S")
    (maildir / "cur/1700000003.M3P10.host:2,S").rename(maildir / "cur/1700000003.M3P10.host:2,ST")
    assert listing(tmp_path) == first
    table = load_cache(str(maildir))
    assert table is not None
    assert table.places == ["c:2,", "c:2,S", "n", "c:2,ST", "c:2,RS", "n"]


def assert_cache_trusted(tmp_path: Path, first: tuple[MessageInfo, ...]) -> None:
    """The cache holds settled stamps, and open trusts it: a file slipped into new/ with
    the directory's mtime put back is not listed, proving that no scan happened."""
    maildir = tmp_path / "alice" / "Maildir"
    table = load_cache(str(maildir))
    assert table is not None and table.stamps is not None and table.stamps.settled
    new_dir = (maildir / "new").stat()
    (maildir / "new/1800000000.M1P1.sneaky").write_bytes(b"unseen\n")
    os.utime(maildir / "new", ns=(new_dir.st_atime_ns, new_dir.st_mtime_ns))
    assert listing(tmp_path) == first


def test_settled_directories_are_not_listed_again(tmp_path: Path) -> None:
    """While new/ and cur/ keep the mtime and inode the cache recorded (and that mtime was
    settled when recorded), open trusts the cache instead of listing them."""
    maildir = maildir_of(tmp_path)
    corpus(maildir)
    settle(maildir)
    first = listing(tmp_path)
    assert_cache_trusted(tmp_path, first)
    # Any real change moves the mtime: the next open lists again and finds it.
    (maildir / "new/1800000001.M1P1.later").write_bytes(b"later\n")
    keys = [m.key for m in listing(tmp_path)]
    assert keys == [m.key for m in first] + ["1800000000.M1P1.sneaky", "1800000001.M1P1.later"]


def test_recent_directory_changes_are_not_trusted(tmp_path: Path) -> None:
    """A change within DirStamps.SETTLE_NS of the stamp could share its mtime: list."""
    maildir = maildir_of(tmp_path)
    corpus(maildir)  # new/ and cur/ changed just now
    first = listing(tmp_path)
    table = load_cache(str(maildir))
    assert table is not None and table.stamps is not None and not table.stamps.settled
    new_dir = (maildir / "new").stat()
    (maildir / "new/1800000000.M1P1.quick").write_bytes(b"quick\n")
    os.utime(maildir / "new", ns=(new_dir.st_atime_ns, new_dir.st_mtime_ns))
    assert [m.key for m in listing(tmp_path)] == [m.key for m in first] + ["1800000000.M1P1.quick"]


def test_stamps_recorded_too_early_are_recorded_again_once_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mail that arrived just before the first open leaves unsettled stamps in the cache;
    the first open after the directories settle records settled ones, so that every
    open after it skips the listing (it used to list the maildrop at every open)."""
    maildir = maildir_of(tmp_path)
    corpus(maildir)
    first = listing(tmp_path)
    early = load_cache(str(maildir))
    assert early is not None and early.stamps is not None and not early.stamps.settled
    # The clock moves on past DirStamps.SETTLE_NS; the directories stay as they are.
    later = types.SimpleNamespace(time_ns=lambda: time.time_ns() + 2 * DirStamps.SETTLE_NS)
    monkeypatch.setattr(maildir_listing, "time", later)
    assert listing(tmp_path) == first
    assert_cache_trusted(tmp_path, first)


def test_a_replaced_directory_is_listed(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)
    settle(maildir)
    first = listing(tmp_path)
    old = (maildir / "cur").stat()
    (maildir / "cur").rename(maildir / "cur.old")
    (maildir / "cur").mkdir()
    os.utime(maildir / "cur", ns=(old.st_atime_ns, old.st_mtime_ns))
    assert [m.key for m in listing(tmp_path)] == [
        m.key for m in first if not m.key.startswith(("1700000003", "1700000004", "legacy"))
    ]


def test_a_message_moved_during_a_trusted_session_is_still_read(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    messages = corpus(maildir)
    settle(maildir)
    listing(tmp_path)  # writes settled stamps

    async def scenario() -> bytes:
        maildrop = await opened(tmp_path)
        try:
            key = "1700000001.M1P10.host"
            (maildir / "new" / key).rename(maildir / "cur" / (key + ":2,S"))
            return b"".join([block async for block in maildrop.read(key)])
        finally:
            await maildrop.close()

    assert run(scenario()) == messages["new/1700000001.M1P10.host"]


def test_cached_sizes_are_not_read_again(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    path = maildir / "new/1700000001.M1P10.host"
    path.write_bytes(b"a\nb\n")
    assert [m.octets for m in listing(tmp_path)] == [6]
    path.write_bytes(b"a much longer text\n" * 10)  # never done to a Maildir message
    assert [m.octets for m in listing(tmp_path)] == [6]


def test_a_changed_message_is_counted_and_its_size_kept(tmp_path: Path) -> None:
    """message_changed (a RETR found another size than listed): the file is counted as
    it is now and the cache keeps that size, whatever the name's ,W= says; a message
    that has gone loses its entry."""
    maildir = maildir_of(tmp_path)
    wrong = maildir / "cur/1700000001.M1P10.host,S=4,W=99:2,S"
    wrong.write_bytes(b"a\nb\n")
    gone = maildir / "cur/1700000002.M2P10.host:2,S"
    gone.write_bytes(b"gone\n")
    assert [m.octets for m in listing(tmp_path)] == [99, 6]

    async def changed() -> None:
        maildrop = await opened(tmp_path)
        gone.unlink()
        try:
            await maildrop.message_changed("1700000001.M1P10.host,S=4,W=99")
            await maildrop.message_changed("1700000002.M2P10.host")
        finally:
            await maildrop.close()

    run(changed())
    table = load_cache(str(maildir))
    assert table is not None
    assert (table.names, table.octets) == (["1700000001.M1P10.host,S=4,W=99"], [6])
    assert [(m.key, m.octets) for m in listing(tmp_path)] == [("1700000001.M1P10.host,S=4,W=99", 6)]


def test_new_and_removed_messages_update_the_cache(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)
    first = listing(tmp_path)
    (maildir / "cur/legacy-name:2,").unlink()
    (maildir / "new/1800000000.M1P1.later").write_bytes(b"later\n")
    second = listing(tmp_path)
    assert [m.key for m in second] == [m.key for m in first[1:]] + ["1800000000.M1P1.later"]
    assert second[:-1] == first[1:]
    table = load_cache(str(maildir))
    assert table is not None
    assert table.names == [m.key for m in second]


def test_a_newcomer_older_than_cached_messages_is_sorted_in(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)
    first = listing(tmp_path)
    (maildir / "cur/1650000000.M1P1.restored:2,S").write_bytes(b"from a backup\n")
    second = listing(tmp_path)
    assert [m.key for m in second] == [
        "legacy-name",
        "1650000000.M1P1.restored",
        *[m.key for m in first[1:]],
    ]
    assert load_cache(str(maildir)) is not None
    assert listing(tmp_path) == second


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage", "other-version"])
def test_lost_or_corrupt_cache_is_rebuilt_with_identical_uidls(tmp_path: Path, damage: str) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)
    first = listing(tmp_path)
    cache = maildir / CACHE_FILE_NAME
    if damage == "delete":
        cache.unlink()
    elif damage == "truncate":
        cache.write_bytes(cache.read_bytes()[:-10])
    elif damage == "garbage":
        cache.write_bytes(os.urandom(4000))
    else:
        cache.write_bytes(cache.read_bytes().replace(b"popbox-cache\t2", b"popbox-cache\t9"))
    assert listing(tmp_path) == first
    assert load_cache(str(maildir)) is not None  # rebuilt


def test_a_cache_symlink_is_not_followed(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)
    first = listing(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not a cache")
    (maildir / CACHE_FILE_NAME).unlink()
    (maildir / CACHE_FILE_NAME).symlink_to(elsewhere)
    assert listing(tmp_path) == first
    assert elsewhere.read_text() == "not a cache"


def test_a_leftover_temp_file_is_replaced(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)
    (maildir / (CACHE_FILE_NAME + ".tmp")).write_text("left by a crash")
    first = listing(tmp_path)
    assert not (maildir / (CACHE_FILE_NAME + ".tmp")).exists()
    assert load_cache(str(maildir)) is not None
    assert listing(tmp_path) == first


def test_an_unwritable_cache_only_costs_time(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)
    (maildir / (CACHE_FILE_NAME + ".tmp")).mkdir()  # the temp file cannot be created
    first = listing(tmp_path)
    assert len(first) == 6
    assert not (maildir / CACHE_FILE_NAME).exists()
    assert listing(tmp_path) == first


def test_repeated_unique_ids_in_a_hand_edited_cache_are_reassigned(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)
    first = listing(tmp_path)
    table = load_cache(str(maildir))
    assert table is not None
    table.unique_ids = list(table.unique_ids)
    table.unique_ids[2] = table.unique_ids[1]
    (maildir / CACHE_FILE_NAME).write_bytes(format_cache(table))
    again = listing(tmp_path)
    assert [m.unique_id for m in again] == [m.unique_id for m in first]


# --- sizes from the name -------------------------------------------------------------------


def test_w_field_is_the_size_and_s_field_is_not(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    (maildir / "new/1700000001.M1P1.host,S=4,W=999").write_bytes(b"abc\n")
    (maildir / "new/1700000002.M1P1.host,S=4").write_bytes(b"abc\n")
    (maildir / "cur/1700000003.M1P1.host,W=5,S=4:2,S").write_bytes(b"abc\n")
    (maildir / "new/1700000004.M1P1.host,W=x").write_bytes(b"abc\n")
    assert [(m.key, m.octets) for m in listing(tmp_path)] == [
        ("1700000001.M1P1.host,S=4,W=999", 999),  # trusted: no file is read
        ("1700000002.M1P1.host,S=4", 5),  # counted: S= is the stored size
        ("1700000003.M1P1.host,W=5,S=4", 5),
        ("1700000004.M1P1.host,W=x", 5),
    ]


# --- first retrievals (RFC 2449 section 6.7 EXPIRE) ------------------------------------------


def test_first_retrieval_times_persist_and_are_kept(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)

    async def scenario() -> list[list[float | None]]:
        seen = []
        drop = await opened(tmp_path)
        seen.append([m.first_retrieved for m in drop.listing])
        keys = [m.key for m in drop.listing]
        await drop.record_retrievals([keys[1], keys[3]], 1_800_000_000.5)
        await drop.close()
        drop = await opened(tmp_path)
        seen.append([m.first_retrieved for m in drop.listing])
        await drop.record_retrievals([keys[1], keys[4]], 1_900_000_000.0)
        await drop.close()
        drop = await opened(tmp_path)
        seen.append([m.first_retrieved for m in drop.listing])
        await drop.close()
        return seen

    first, second, third = run(scenario())
    assert first == [None] * 6
    assert second == [None, 1_800_000_000.5, None, 1_800_000_000.5, None, None]
    assert third == [None, 1_800_000_000.5, None, 1_800_000_000.5, 1_900_000_000.0, None]


def test_retrieval_times_survive_a_new_message_and_a_settings_change(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)

    async def record() -> str:
        drop = await opened(tmp_path)
        key = drop.listing[2].key
        await drop.record_retrievals([key], 1_800_000_000.0)
        await drop.close()
        return key

    key = run(record())
    (maildir / "new/1800000000.M1P1.later").write_bytes(b"later\n")
    assert {m.key: m.first_retrieved for m in listing(tmp_path)}[key] == 1_800_000_000.0

    async def with_xuidl() -> dict[str, float | None]:
        store = MaildirStore(str(tmp_path / "%u" / "Maildir"), xuidl=True)
        drop = await store.open("alice")
        await drop.close()
        return {m.key: m.first_retrieved for m in drop.listing}

    assert run(with_xuidl())[key] == 1_800_000_000.0


def test_delete_drops_cache_entries_and_closed_maildrop_refuses(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)

    async def scenario() -> None:
        drop = await opened(tmp_path)
        keys = [m.key for m in drop.listing]
        result = await drop.delete(keys[:2])
        assert result.removed == tuple(keys[:2])
        table = load_cache(str(maildir))
        assert table is not None
        assert table.names == keys[2:]
        with pytest.raises(KeyError):
            await drop.record_retrievals(["no-such-key"], 1.0)
        await drop.close()
        with pytest.raises(StoreError):
            await drop.record_retrievals(keys[2:3], 1.0)

    run(scenario())


def test_unwritable_retrieval_times_raise_store_error(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)

    async def scenario() -> None:
        drop = await opened(tmp_path)
        (maildir / (CACHE_FILE_NAME + ".tmp")).mkdir()
        try:
            with pytest.raises(StoreError):
                await drop.record_retrievals([drop.listing[0].key], 1.0)
            # Already recorded ones need no write.
            await drop.record_retrievals([], 1.0)
        finally:
            await drop.close()

    run(scenario())


# --- a big maildrop --------------------------------------------------------------------------


def test_ten_thousand_messages_open_timing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Printed, not asserted: machines differ (benchmarks/maildir_100k.py for 100,000)."""
    maildir = maildir_of(tmp_path)
    data = b"From: a@example.org\nSubject: s\n\nbody\n"
    wire = len(data) + data.count(b"\n")
    for number in range(10_000):
        base = f"{1_700_000_000 + number}.M{number}P1.host"
        if number % 2:
            (maildir / "new" / f"{base},S={len(data)},W={wire}").write_bytes(data)
        else:
            (maildir / "cur" / f"{base}:2,S").write_bytes(data)
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        infos = listing(tmp_path)
        timings.append(time.perf_counter() - start)
    assert len(infos) == 10_000
    assert {m.octets for m in infos} == {wire}
    with capsys.disabled():
        print(f"\n10,000 messages: open {timings[0]:.3f} s without cache, {timings[1]:.3f} s with")
