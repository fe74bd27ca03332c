"""xuidl: a valid `X-UIDL:` header wins (storage/maildir_measure.py find_x_uidl), read once
from the header block only, and unique within the maildrop."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from popbox.storage.base import MessageInfo
from popbox.storage.maildir import MaildirStore, UidlFormat
from popbox.storage.maildir_cache import CACHE_FILE_NAME
from popbox.storage.maildir_measure import HEADER_SCAN_LIMIT, find_x_uidl, measure_file


def maildir_of(tmp_path: Path) -> Path:
    maildir = tmp_path / "alice" / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    return maildir


def listing(
    tmp_path: Path, *, xuidl: bool = True, uidl_format: UidlFormat = "popbox"
) -> list[MessageInfo]:
    async def scenario() -> list[MessageInfo]:
        store = MaildirStore(str(tmp_path / "%u" / "Maildir"), uidl_format=uidl_format, xuidl=xuidl)
        maildrop = await store.open("alice")
        await maildrop.close()
        return list(maildrop.listing)

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"X-UIDL: abc123\n\nbody\n", "abc123"),
        (b"Subject: s\r\nx-uidl:\t<1.2@host>  \r\n\r\n", "<1.2@host>"),
        (b"X-Uidl  : spaced-name\n\n", "spaced-name"),  # obsolete WSP before the colon
        (b"X-UIDL:\n folded\n\n", "folded"),
        (b"X-UIDL: two\n words\n\n", None),  # unfolds to "two words": a space
        (b"X-UIDL: " + b"a" * 70 + b"\n\n", "a" * 70),
        (b"X-UIDL: " + b"a" * 71 + b"\n\n", None),
        (b"X-UIDL: caf\xc3\xa9\n\n", None),
        (b"X-UIDL: \n\n", None),
        (b"X-UIDL: first\nX-UIDL: second\n\n", "first"),
        (b"X-UIDL-Extra: no\n\n", None),
        (b"Subject: s\n\nX-UIDL: in the body\n", None),
        (b"\nX-UIDL: no header at all\n", None),
        (b"\r\nX-UIDL: no header at all\n", None),
        (b"X-UIDL: header-only", None),  # cut inside the line: not trusted
        (b"X-UIDL: header-only\n", "header-only"),
    ],
)
def test_find_x_uidl(header: bytes, expected: str | None) -> None:
    assert find_x_uidl(header) == expected


def test_only_the_header_block_is_read(tmp_path: Path) -> None:
    path = tmp_path / "message"
    path.write_bytes(b"Subject: s\n\n" + b"X-UIDL: later\n" * 100_000)
    measured = measure_file(str(path), octets=False, mtime=False, x_uidl=True)
    assert measured is not None
    assert measured.x_uidl is None
    assert measured.octets is None


def test_a_huge_header_is_searched_up_to_the_limit(tmp_path: Path) -> None:
    filler = b"Received: " + b"x" * 100 + b"\n"
    lines = 3 * 1024 * 1024 // len(filler)  # beyond one counting block, too
    early = tmp_path / "early"
    early.write_bytes(b"X-UIDL: early\n" + filler * lines)
    late = tmp_path / "late"
    late.write_bytes(filler * (2 * HEADER_SCAN_LIMIT // len(filler)) + b"X-UIDL: late\n\n")
    for path, expected in ((early, "early"), (late, None)):
        data = path.read_bytes()
        for octets in (False, True):
            measured = measure_file(str(path), octets=octets, mtime=False, x_uidl=True)
            assert measured is not None
            assert measured.x_uidl == expected
            assert measured.octets == (len(data) + data.count(b"\n") if octets else None)


def test_x_uidl_wins_and_is_read_only_once(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    (maildir / "new/1700000001.M1P1.host").write_bytes(b"X-UIDL: qpopper-1\n\nbody\n")
    (maildir / "new/1700000002.M2P1.host,S=5,W=7").write_bytes(b"X-UIDL: qpopper-2\n\nb\n")
    (maildir / "cur/1700000003.M3P1.host:2,S").write_bytes(b"Subject: none\n\nbody\n")
    first = listing(tmp_path)
    assert [(m.unique_id, m.octets) for m in first] == [
        ("qpopper-1", 27),
        ("qpopper-2", 7),
        ("1700000003.M3P1.host", 23),
    ]
    # Cached: the file is not read again (a Maildir message never changes; this one does).
    (maildir / "new/1700000001.M1P1.host").write_bytes(b"X-UIDL: changed\n\nbody\n")
    assert listing(tmp_path) == first
    # A lost cache reads the headers again: the same unique-ids, unchanged files assumed.
    (maildir / "new/1700000001.M1P1.host").write_bytes(b"X-UIDL: qpopper-1\n\nbody\n")
    (maildir / CACHE_FILE_NAME).unlink()
    assert listing(tmp_path) == first


def test_without_xuidl_the_header_is_ignored(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    (maildir / "new/1700000001.M1P1.host").write_bytes(b"X-UIDL: qpopper-1\n\nbody\n")
    assert [m.unique_id for m in listing(tmp_path, xuidl=False)] == ["1700000001.M1P1.host"]


def test_x_uidl_collisions_make_the_later_message_yield(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    (maildir / "new/1700000001.M1P1.host").write_bytes(b"X-UIDL: same\n\n1\n")
    (maildir / "new/1700000002.M2P1.host").write_bytes(b"X-UIDL: same\n\n2\n")
    # Claims the next message's name; that message then yields to a digest of its name.
    (maildir / "new/1700000003.M3P1.host").write_bytes(b"X-UIDL: 1700000004.M4P1.host\n\n3\n")
    (maildir / "new/1700000004.M4P1.host").write_bytes(b"Subject: 4\n\n4\n")
    first = listing(tmp_path)
    assert [m.unique_id for m in first] == [
        "same",
        "1700000002.M2P1.host",
        "1700000004.M4P1.host",
        hashlib.sha1(b"1700000004.M4P1.host").hexdigest(),
    ]
    # A newcomer with a taken X-UIDL yields too; everyone else keeps theirs.
    (maildir / "new/1700000005.M5P1.host").write_bytes(b"X-UIDL: same\n\n5\n")
    again = listing(tmp_path)
    assert [m.unique_id for m in again] == [m.unique_id for m in first] + ["1700000005.M5P1.host"]


def test_x_uidl_wins_over_dovecot(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    (maildir / "new/1700000001.M1P1.host").write_bytes(b"X-UIDL: from-header\n\n1\n")
    (maildir / "new/1700000002.M2P1.host").write_bytes(b"X-UIDL: bad uidl\n\n2\n")
    (maildir / "dovecot-uidlist").write_text(
        "3 V1 N3 G00\n1 :1700000001.M1P1.host\n2 :1700000002.M2P1.host\n"
    )
    assert [m.unique_id for m in listing(tmp_path, uidl_format="dovecot")] == [
        "from-header",
        "0000000200000001",
    ]
