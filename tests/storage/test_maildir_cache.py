"""The maildrop cache `popbox-cache` (storage/maildir_cache.py): what it stores, that it is
written only when something changed, that a lost or corrupt one is rebuilt with the same
unique-ids, first retrieval times (RFC 2449 section 6.7 EXPIRE), and sizes from ,W=."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

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


def test_format_round_trip_with_odd_names() -> None:
    table = CacheTable(
        "dovecot+xuidl",
        names=["1700000001.M1P1.host,S=5,W=6", "back\\slash\ttab\nnewline\rcr", "caf\udce9"],
        octets=[6, 0, 123_456_789_012],
        delivered_ns=[1_700_000_001_000_000_000, 0, 5],
        ranks=[2**32 + 1, 2**33, 7],
        unique_ids=["000000016b08c270", "x" * 70, "!~"],
        first_retrieved=[None, 1_800_000_000.25, 0.0],
    )
    text = format_cache(table)
    assert text.splitlines()[:7] == [
        "popbox-cache\t1\tdovecot+xuidl\t3",
        "octets\t6 0 123456789012",
        "delivered\t1700000001000000000 0 5",
        "rank\t4294967297 8589934592 7",
        "uidl\t000000016b08c270 " + "x" * 70 + " !~",
        "retrieved\t- 1800000000.25 0.0",
        "names",
    ]
    assert text.endswith("\nend\n")
    assert parse_cache(text) == table


def test_empty_table_round_trip() -> None:
    table = CacheTable("popbox")
    assert format_cache(table) == (
        "popbox-cache\t1\tpopbox\t0\noctets\t\ndelivered\t\nrank\t\nuidl\t\nretrieved\t\n"
        "names\nend\n"
    )
    assert parse_cache(format_cache(table)) == table


GOOD = format_cache(
    CacheTable("popbox", ["a", "b"], [1, 2], [3, 4], [5, 6], ["ua", "ub"], [None, 1.5])
)


@pytest.mark.parametrize(
    "broken",
    [
        "",
        GOOD[:-1],  # cut inside the end line
        GOOD[: GOOD.index("end\n")],  # cut before it
        GOOD.replace("popbox-cache\t1", "popbox-cache\t2"),  # another version
        GOOD.replace("\t2\n", "\t3\n", 1),  # count disagrees
        GOOD.replace("octets\t1 2", "octets\t1"),
        GOOD.replace("octets\t1 2", "octets\t1 x"),
        GOOD.replace("octets\t1 2", "octets\t1 -2"),
        GOOD.replace("uidl\tua ub", "uidl\tua u\x7fb"),
        GOOD.replace("uidl\tua ub", "uidl\tua " + "u" * 71),
        GOOD.replace("uidl\tua ub", "uidl\tua  ub"),
        GOOD.replace("retrieved\t- 1.5", "retrieved\t- nan"),
        GOOD.replace("retrieved\t- 1.5", "retrieved\t- -1"),
        GOOD.replace("names\na\nb\n", "names\na\na\n"),  # a name twice
        GOOD.replace("names\na\nb\n", "names\na\n\n"),  # an empty name
        GOOD.replace("names\na\nb\n", "names\na\\x\nb\n"),  # an unknown escape
        GOOD.replace("rank\t", "ranks\t"),
    ],
)
def test_corrupt_files_are_refused(broken: str) -> None:
    with pytest.raises(CorruptCache):
        parse_cache(broken)


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


def test_unchanged_maildrop_does_not_rewrite_the_cache(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    corpus(maildir)
    listing(tmp_path)
    before = (maildir / CACHE_FILE_NAME).stat()
    # Flag changes and new/ -> cur/ moves do not change what is cached.
    (maildir / "new/1700000001.M1P10.host").rename(maildir / "cur/1700000001.M1P10.host:2,S")
    listing(tmp_path)
    after = (maildir / CACHE_FILE_NAME).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not (maildir / (CACHE_FILE_NAME + ".tmp")).exists()


def test_cached_sizes_are_not_read_again(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    path = maildir / "new/1700000001.M1P10.host"
    path.write_bytes(b"a\nb\n")
    assert [m.octets for m in listing(tmp_path)] == [6]
    path.write_bytes(b"a much longer text\n" * 10)  # never done to a Maildir message
    assert [m.octets for m in listing(tmp_path)] == [6]


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
        cache.write_text(cache.read_text().replace("popbox-cache\t1", "popbox-cache\t9"))
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
    cache = maildir / CACHE_FILE_NAME
    text = cache.read_text()
    cache.write_text(text.replace(first[2].unique_id, first[1].unique_id, 1))
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
