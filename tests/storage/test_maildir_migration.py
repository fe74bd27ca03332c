"""UIDL continuity for migrations: Dovecot's dovecot-uidlist and Courier's
courierpop3dsizelist (storage/uidl_dovecot.py, uidl_courier.py, maildir_uidl.py), and
unique-ids that stay unique when sources collide. The real Dovecot is the oracle in
test_maildir_dovecot_oracle.py; these are the file formats written by hand."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from popbox.storage.base import MessageInfo, StoreError
from popbox.storage.maildir import MaildirStore, UidlFormat
from popbox.storage.maildir_cache import CACHE_FILE_NAME, load_cache
from popbox.storage.uidl_courier import (
    BrokenSizelist,
    parse_courier_sizelist,
    version0_unique_id,
)
from popbox.storage.uidl_dovecot import (
    BrokenUidlist,
    DovecotRecord,
    parse_dovecot_uidlist,
)


def maildir_of(tmp_path: Path) -> Path:
    maildir = tmp_path / "alice" / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    return maildir


def listing(tmp_path: Path, uidl_format: UidlFormat) -> list[MessageInfo]:
    async def scenario() -> list[MessageInfo]:
        store = MaildirStore(str(tmp_path / "%u" / "Maildir"), uidl_format=uidl_format)
        maildrop = await store.open("alice")
        await maildrop.close()
        return list(maildrop.listing)

    return asyncio.run(scenario())


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


# --- dovecot-uidlist, the file ---------------------------------------------------------------


def test_dovecot_v3_records_and_fields() -> None:
    uidlist = parse_dovecot_uidlist(
        "3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n"
        "25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394:2,\n"
        "25017 W2481 G90e9ac62b2c2e94c5e1e00008c4a11c1 :1276533073.M242911P3632.kurkku\n"
        "25018 P:odd:uidl: O3 S55 :1276533074.M1P1.kurkku\n"
        "25019 P O1 :1276533075.M1P1.kurkku\n"
        "25020 Q!bad W12345678901234567890 :1276533076.M1P1.kurkku\n"
    )
    assert (uidlist.version, uidlist.uid_validity, uidlist.next_uid) == (3, 1275660208, 25022)
    assert uidlist.records == {
        "1276528487.M364837P9451.kurkku,S=1355,W=1394": DovecotRecord(25006, None, None, None),
        "1276533073.M242911P3632.kurkku": DovecotRecord(25017, None, 2481, None),
        "1276533074.M1P1.kurkku": DovecotRecord(25018, ":odd:uidl:", None, 3),
        "1276533075.M1P1.kurkku": DovecotRecord(25019, "", None, 1),
        "1276533076.M1P1.kurkku": DovecotRecord(25020, None, None, None),
    }
    record = uidlist.records["1276533073.M242911P3632.kurkku"]
    assert uidlist.unique_id("1276533073.M242911P3632.kurkku", record) == "000061b94c0907b0"
    assert uidlist.unique_id("x", uidlist.records["1276533074.M1P1.kurkku"]) == ":odd:uidl:"
    assert uidlist.unique_id("base", uidlist.records["1276533075.M1P1.kurkku"]) == "base"


def test_dovecot_v1_header_and_records() -> None:
    uidlist = parse_dovecot_uidlist("1 1100000000 7\n3 1099999999.M1P1.host:2,S\n5 1.2.3\n")
    assert (uidlist.version, uidlist.uid_validity, uidlist.next_uid) == (1, 1100000000, 7)
    assert uidlist.records == {
        "1099999999.M1P1.host": DovecotRecord(3, None, None, None),
        "1.2.3": DovecotRecord(5, None, None, None),
    }
    record = uidlist.records["1.2.3"]
    assert uidlist.unique_id("1.2.3", record) == "000000054190ab00"


def test_dovecot_broken_lines_are_skipped_and_next_uid_follows_the_records() -> None:
    uidlist = parse_dovecot_uidlist(
        "3 V5 N1 G00\n"
        "1 :a\n"
        "x :b\n"  # not a uid
        "0 :c\n"  # uid 0
        "2 W5\n"  # no file name
        "3 :d/e\n"  # a slash
        "4294967295 :f\n"  # 2^32 - 1 is refused
        "9 :a\n"  # the same name again: the later line wins
        "\n"
    )
    assert uidlist.records == {"a": DovecotRecord(9, None, None, None)}
    assert uidlist.next_uid == 10  # the header said 1


@pytest.mark.parametrize(
    "header",
    ["", "2 1 2", "3 N5 G00", "3 V5 G00", "3 V0 N1", "1 5", "1 x 5", "3 V4294967296 N1", "x"],
)
def test_dovecot_headers_dovecot_refuses_are_refused(header: str) -> None:
    with pytest.raises(BrokenUidlist):
        parse_dovecot_uidlist(header + "\n1 :a\n")


# --- dovecot, in the store -----------------------------------------------------------------


def dovecot_maildrop(tmp_path: Path) -> Path:
    maildir = maildir_of(tmp_path)
    messages = {
        "cur/1700000001.M1P1.host:2,S": b"one\n",
        "cur/1700000002.M2P1.host,S=4:2,RS": b"two\n",
        "new/1700000003.M3P1.host": b"three\n",  # W in the uidlist
        "new/1700000004.M4P1.host": b"four\n",  # P override
        "new/1700000005.M5P1.host": b"five\n",  # empty P: the base name
        "new/1600000000.M6P1.host": b"six\n",  # older, but POP3 order 1 puts it first
        "new/1800000000.M7P1.new": b"never seen by Dovecot\n",
        "new/0123456789abcdef": b"looks like a Dovecot UIDL\n",
    }
    for name, data in messages.items():
        (maildir / name).write_bytes(data)
    os.utime(maildir / "new/0123456789abcdef", (1_650_000_000, 1_650_000_000))
    (maildir / "dovecot-uidlist").write_text(
        "3 V1700000000 N20 G3085f01b7f11094c501100008c4a11c1\n"
        "3 :1700000001.M1P1.host\n"
        "4 :1700000002.M2P1.host,S=4:2,RS\n"
        "7 W777 :1700000003.M3P1.host\n"
        "8 Pmigrated-uidl-8 :1700000004.M4P1.host\n"
        "9 P :1700000005.M5P1.host\n"
        "12 O1 :1600000000.M6P1.host\n"
        "15 :1700000099.M9P1.deleted\n"
    )
    return maildir


def test_dovecot_format_lists_what_dovecot_served(tmp_path: Path) -> None:
    dovecot_maildrop(tmp_path)
    assert [(m.key, m.unique_id, m.octets) for m in listing(tmp_path, "dovecot")] == [
        ("1600000000.M6P1.host", "0000000c6553f100", 5),
        ("1700000001.M1P1.host", "000000036553f100", 5),
        ("1700000002.M2P1.host,S=4", "000000046553f100", 5),
        ("1700000003.M3P1.host", "000000076553f100", 777),  # Dovecot's W: no file read
        ("1700000004.M4P1.host", "migrated-uidl-8", 6),
        ("1700000005.M5P1.host", "1700000005.M5P1.host", 6),
        # Dovecot never saw these: popbox's default, never in Dovecot's own format.
        ("0123456789abcdef", sha1("0123456789abcdef"), 27),  # mtime 1650000000
        ("1800000000.M7P1.new", "1800000000.M7P1.new", 23),
    ]


def test_dovecot_uidls_survive_cache_loss_and_a_changed_uidlist(tmp_path: Path) -> None:
    maildir = dovecot_maildrop(tmp_path)
    first = listing(tmp_path, "dovecot")
    (maildir / CACHE_FILE_NAME).unlink()
    assert listing(tmp_path, "dovecot") == first
    # Dovecot ran again and renumbered (a new UIDVALIDITY): what popbox handed out stays.
    (maildir / "dovecot-uidlist").write_text("3 V1800000000 N2 G00\n1 :1700000001.M1P1.host\n")
    assert listing(tmp_path, "dovecot") == first


def test_switching_formats_gives_the_new_formats_uidls(tmp_path: Path) -> None:
    dovecot_maildrop(tmp_path)
    popbox = listing(tmp_path, "popbox")
    assert [m.unique_id for m in popbox][:3] == [
        "1600000000.M6P1.host",
        "0123456789abcdef",  # no Dovecot to tell apart from: the name is fine
        "1700000001.M1P1.host",
    ]
    table = load_cache(str(tmp_path / "alice" / "Maildir"))
    assert table is not None
    assert table.settings == "popbox"
    dovecot = listing(tmp_path, "dovecot")
    assert dovecot[0].unique_id == "0000000c6553f100"
    # Sizes carry over from the popbox cache (counted exactly: 7, not Dovecot's W777).
    assert {m.key: m.octets for m in dovecot} == {m.key: m.octets for m in popbox}


def test_a_dovecot_uidl_collision_makes_the_later_message_yield(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    (maildir / "new/1700000001.M1P1.host").write_bytes(b"a\n")
    (maildir / "new/1700000002.M2P1.host").write_bytes(b"b\n")
    (maildir / "new/1700000003.M3P1.host").write_bytes(b"c\n")
    (maildir / "dovecot-uidlist").write_text(
        "3 V1 N9 G00\n"
        "1 Psame :1700000001.M1P1.host\n"
        "2 Psame :1700000002.M2P1.host\n"  # Dovecot allows duplicates; popbox cannot
        "3 P1700000003.M3P1.host :1700000004.M4P1.host\n"  # not in the maildrop
        "5 P1700000001.M1P1.host :1700000003.M3P1.host\n"
    )
    assert [m.unique_id for m in listing(tmp_path, "dovecot")] == [
        "same",
        "1700000002.M2P1.host",
        "1700000001.M1P1.host",
    ]


def test_an_unreadable_dovecot_uidlist_is_a_temporary_failure(tmp_path: Path) -> None:
    maildir = dovecot_maildrop(tmp_path)
    (maildir / "dovecot-uidlist").unlink()
    (maildir / "dovecot-uidlist").mkdir()  # EISDIR on read
    with pytest.raises(StoreError):
        listing(tmp_path, "dovecot")
    assert not (maildir / CACHE_FILE_NAME).exists()  # no default was cached in its place


def test_a_broken_dovecot_uidlist_is_ignored(tmp_path: Path) -> None:
    maildir = dovecot_maildrop(tmp_path)
    (maildir / "dovecot-uidlist").write_text("7 whatever\n1 :1700000001.M1P1.host\n")
    infos = listing(tmp_path, "dovecot")
    assert infos[0].unique_id == "1600000000.M6P1.host"


# --- courierpop3dsizelist ---------------------------------------------------------------------

COURIER_V2 = (
    "/2 9 1600000000\n"
    "1700000001.M1P1.host:2,S 1234 1:1600000000\n"
    "1700000002.M2P1.host,S=4:2,RS 4 2:1600000000\n"
    "1700000003.M3P1.my+host with space:2, 17 0:1600000000\n"
    "1700000004.M4P1.host:2,S 5 7:0\n"
    "1700000099.M9P1.deleted:2,S 5 8:1600000000\n"
    "broken line\n"
    "1700000005.M5P1.host:2,S x 3:1600000000\n"
)


def test_courier_v2_file() -> None:
    assert parse_courier_sizelist(COURIER_V2) == {
        "1700000001.M1P1.host": "UID1-1600000000",
        "1700000002.M2P1.host,S=4": "UID2-1600000000",
        "1700000003.M3P1.my+host with space": "1700000003.M3P1.my+2Bhost+20with+20space",
        "1700000004.M4P1.host": "UID7",
        "1700000099.M9P1.deleted": "UID8-1600000000",
    }


def test_courier_v3_file() -> None:
    assert parse_courier_sizelist(
        "/3 12 1650000000\n"
        "1700000001.M1P1.host:2,S 1234 10:1650000000:0\n"
        "1700000002.M2P1.host:2,S 99 11:1650000000:1\n"
    ) == {
        "1700000001.M1P1.host": "UID10-1650000000",
        "1700000002.M2P1.host": "UID11-1650000000",
    }


@pytest.mark.parametrize("header", ["/1 5 1600000000", "/4 5 1", "/2", "2 5 1", "", "/x 5 1"])
def test_courier_headers_courier_refuses_are_refused(header: str) -> None:
    with pytest.raises(BrokenSizelist):
        parse_courier_sizelist(header + "\na:2,S 5 1:1\n")


def test_courier_version0_escapes() -> None:
    assert version0_unique_id("a'b\"c+d e\x7ff") == "a+27b+22c+2Bd+20e+7Ff"
    assert version0_unique_id("caf\u00e9") == "caf+C3+A9"


def test_courier_format_in_the_store(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    messages = {
        "cur/1700000001.M1P1.host:2,S": b"one\n",
        "cur/1700000002.M2P1.host,S=4:2,RS": b"two\n",
        "cur/1700000003.M3P1.my+host with space:2,": b"three\n",
        "cur/1700000004.M4P1.host:2,S": b"four\n",
        "new/1800000000.M5P1.new": b"never seen by Courier\n",
        "new/UID3-1600000000": b"looks like a Courier UIDL\n",
    }
    for name, data in messages.items():
        (maildir / name).write_bytes(data)
    os.utime(maildir / "new/UID3-1600000000", (1_650_000_000, 1_650_000_000))
    (maildir / "courierpop3dsizelist").write_text(COURIER_V2)
    assert [(m.key, m.unique_id, m.octets) for m in listing(tmp_path, "courier")] == [
        ("UID3-1600000000", sha1("UID3-1600000000"), 27),  # no time in the name: mtime
        ("1700000001.M1P1.host", "UID1-1600000000", 5),  # Courier's 1234 is not used
        ("1700000002.M2P1.host,S=4", "UID2-1600000000", 5),
        ("1700000003.M3P1.my+host with space", "1700000003.M3P1.my+2Bhost+20with+20space", 7),
        ("1700000004.M4P1.host", "UID7", 6),
        ("1800000000.M5P1.new", "1800000000.M5P1.new", 23),
    ]
    (maildir / CACHE_FILE_NAME).unlink()
    assert [m.unique_id for m in listing(tmp_path, "courier")][1:3] == [
        "UID1-1600000000",
        "UID2-1600000000",
    ]


def test_without_a_courier_file_the_default_is_used(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    (maildir / "new/1700000001.M1P1.host").write_bytes(b"x\n")
    assert [m.unique_id for m in listing(tmp_path, "courier")] == ["1700000001.M1P1.host"]


def test_unknown_uidl_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uidl_format"):
        MaildirStore(str(tmp_path / "%u"), uidl_format="uw")  # type: ignore[arg-type]
