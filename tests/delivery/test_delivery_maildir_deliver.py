"""deliver_to_maildir and MaildirStore.deliver: tmp/ -> new/, Dovecot-style names.

Names are `<seconds>.M<usec>P<pid>Q<counter>.<host>,S=<size>,W=<wire size>`; the store's
listing reads the size from W= and the order from the time, without opening the file.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import time
from contextlib import aclosing
from pathlib import Path

import pytest

from popbox.storage.base import InvalidMaildropUser, StoreError
from popbox.storage.maildir import MaildirStore
from popbox.storage.maildir_deliver import (
    deliver_to_maildir,
    local_hostname,
    maildir_hostname,
)

NAME = re.compile(r"(\d+)\.M(\d{1,6})P(\d+)Q(\d+)\.(.+),S=(\d+),W=(\d+)")

MESSAGE = b"Subject: hi\n\n.dot\nline with bare\rcr\nno final line end"


def wire_size(stored: bytes) -> int:
    """Independently of storage/octets.py: LF -> CRLF, and a final CRLF if missing."""
    wire = stored.replace(b"\n", b"\r\n")
    return len(wire if wire.endswith(b"\r\n") else wire + b"\r\n")


def entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_creates_the_maildir_and_names_the_file(tmp_path: Path) -> None:
    maildir = tmp_path / "alice" / "Maildir"
    before = time.time()
    name = deliver_to_maildir(str(maildir), MESSAGE, hostname="mx.example.org")
    after = time.time()

    for sub in ("new", "cur", "tmp"):
        assert stat.S_IMODE((maildir / sub).stat().st_mode) == 0o700
    assert stat.S_IMODE(maildir.stat().st_mode) == 0o700
    assert entries(maildir / "new") == [name]
    assert entries(maildir / "tmp") == []
    assert entries(maildir / "cur") == []
    path = maildir / "new" / name
    assert path.read_bytes() == MESSAGE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    match = NAME.fullmatch(name)
    assert match is not None, name
    seconds, usec, pid, _counter, host, size, wire = match.groups()
    assert int(before) <= int(seconds) <= int(after)
    assert int(usec) < 1_000_000
    assert int(pid) == os.getpid()
    assert host == "mx.example.org"
    assert int(size) == len(MESSAGE)
    assert int(wire) == wire_size(MESSAGE)


def test_names_are_unique_and_counted(tmp_path: Path) -> None:
    names = [deliver_to_maildir(str(tmp_path), b"x\n", hostname="h") for _ in range(50)]
    assert len(set(names)) == 50
    counters = [int(m.group(4)) for name in names if (m := NAME.fullmatch(name))]
    assert counters == sorted(counters)
    assert len(counters) == 50


@pytest.mark.parametrize(
    ("hostname", "escaped"),
    [
        ("mx.example.org", "mx.example.org"),
        ("a/b:c", "a\\057b\\072c"),  # Maildir spec
        ("fake,W=1", "fake\\054W=1"),  # "," would start a field of Dovecot's
    ],
)
def test_hostname_is_escaped(tmp_path: Path, hostname: str, escaped: str) -> None:
    assert maildir_hostname(hostname) == escaped
    name = deliver_to_maildir(str(tmp_path), b"x\n", hostname=hostname)
    match = NAME.fullmatch(name)
    assert match is not None
    assert match.group(5) == escaped
    assert "/" not in name
    assert ":" not in name


def test_empty_hostname_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="host name"):
        deliver_to_maildir(str(tmp_path), b"x\n", hostname="")
    assert local_hostname()


def test_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    deliver_to_maildir(str(maildir), b"first\n", hostname="h")
    # new/ replaced by a regular file: the message is written to tmp/, then cannot move.
    new = maildir / "new"
    for leftover in new.iterdir():
        leftover.unlink()
    new.rmdir()
    new.write_bytes(b"")
    with pytest.raises(StoreError, match="cannot deliver"):
        deliver_to_maildir(str(maildir), b"second\n", hostname="h")
    assert entries(maildir / "tmp") == []


def test_unwritable_tmp_is_a_store_error(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    maildir.mkdir()
    (maildir / "tmp").write_bytes(b"")  # a file where tmp/ should be: fails even as root
    with pytest.raises(StoreError, match="cannot deliver"):
        deliver_to_maildir(str(maildir), b"x\n", hostname="h")
    assert entries(maildir / "new") == []


# --- through MaildirStore ----------------------------------------------------------------


async def listing_and_bodies(store: MaildirStore, user: str) -> list[tuple[str, int, bytes]]:
    drop = await store.open(user)
    try:
        result = []
        for info in drop.listing:
            async with aclosing(drop.read(info.key)) as blocks:
                body = b"".join([block async for block in blocks])
            result.append((info.key, info.octets, body))
        return result
    finally:
        await drop.close()


def test_store_delivery_is_listed_with_its_wire_size(tmp_path: Path) -> None:
    store = MaildirStore(str(tmp_path / "%u" / "Maildir"))

    async def main() -> list[tuple[str, int, bytes]]:
        await store.deliver("alice", b"one\n")
        await store.deliver("alice", MESSAGE)
        return await listing_and_bodies(store, "alice")

    listed = asyncio.run(main())
    assert [(octets, body) for _, octets, body in listed] == [
        (wire_size(b"one\n"), b"one\n"),
        (wire_size(MESSAGE), MESSAGE),
    ]
    new = tmp_path / "alice" / "Maildir" / "new"
    assert sorted(key for key, _, _ in listed) == entries(new)


@pytest.mark.parametrize("user", ["", "../bob", ".hidden", "a/b"])
def test_store_refuses_names_that_cannot_be_maildrops(tmp_path: Path, user: str) -> None:
    store = MaildirStore(str(tmp_path / "%u" / "Maildir"))
    with pytest.raises(InvalidMaildropUser):
        asyncio.run(store.deliver(user, b"x\n"))
    assert entries(tmp_path) == []


def test_store_delivery_does_not_wait_for_the_pop3_lock(tmp_path: Path) -> None:
    """RFC 1939 section 8's lock is for POP3 sessions: Maildir delivery needs none, and
    an open session keeps its snapshot."""
    store = MaildirStore(str(tmp_path / "%u" / "Maildir"))

    async def main() -> tuple[int, int]:
        await store.deliver("alice", b"old\n")
        drop = await store.open("alice")  # holds the lock
        try:
            await store.deliver("alice", b"new\n")
            during = len(drop.listing)
        finally:
            await drop.close()
        return during, len(entries(tmp_path / "alice" / "Maildir" / "new"))

    during, on_disk = asyncio.run(main())
    assert during == 1
    assert on_disk == 2
    assert [body for _, _, body in asyncio.run(listing_and_bodies(store, "alice"))] == [
        b"old\n",
        b"new\n",
    ]
