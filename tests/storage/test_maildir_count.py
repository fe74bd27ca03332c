"""Big new Maildir messages are counted on the event loop, a block per background step
(storage/maildir_count.py), not in the snapshot's worker thread: the snapshot asks for
them (CountFirst), the open counts them and lists the maildrop again."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from popbox import pacing
from popbox.storage import maildir_count, maildir_inline
from popbox.storage.base import READ_BLOCK_SIZE
from popbox.storage.maildir import MaildirStore
from popbox.storage.maildir_cache import CACHE_FILE_NAME
from popbox.storage.maildir_count import BIG_MESSAGE, count_wire_octets
from popbox.storage.maildir_measure import Measured, measure_file
from popbox.storage.maildir_snapshot import CountFirst, take_snapshot
from popbox.storage.octets import wire_octets

NAME = "1700000000.M1P1.host"


def big_text() -> bytes:
    """Over BIG_MESSAGE: LF and CRLF line ends, a CRLF split across two read blocks, a
    last line without a line end."""
    lines = [b"Subject: big\n", b"X-UIDL: big-one\n", b"\n"]
    lines += [b"x" * 78 + (b"\r\n" if n % 3 else b"\n") for n in range(4 * BIG_MESSAGE // 80)]
    data = b"".join(lines)
    cut = READ_BLOCK_SIZE - 1
    data = data[:cut] + b"\r\n" + data[cut:] + b"no line end"
    assert len(data) > BIG_MESSAGE
    return data


def expected_octets(data: bytes) -> int:
    """RFC 1939 section 11 by hand: every bare LF gains a CR, a last line without a line
    end gains CRLF."""
    bare_lf = data.count(b"\n") - data.count(b"\r\n")
    return len(data) + bare_lf + (0 if data.endswith(b"\n") else 2)


def maildir(tmp_path: Path) -> Path:
    root = tmp_path / "alice" / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True)
    return root


class Turns:
    """Counts loop turns: a callback that re-arms itself once per turn."""

    def __init__(self) -> None:
        self.count = 0
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


def test_the_count_is_the_wire_size_a_block_per_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pacing, "FOREGROUND_WINDOW", 60.0)
    pacing.foreground()  # a quiet client is being served: background steps are paced
    path = tmp_path / "big"
    data = big_text()
    path.write_bytes(data)

    async def main() -> tuple[int, int]:
        turns = Turns()
        octets = await count_wire_octets(str(path))
        turns.stop()
        return octets, turns.count

    octets, turns = asyncio.run(main())
    assert octets == expected_octets(data) == wire_octets(data)
    assert turns >= -(-len(data) // READ_BLOCK_SIZE)  # a turn or more per block


def test_a_cold_file_is_read_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cold"
    data = big_text()
    path.write_bytes(data)
    misses: list[int] = []
    cached = maildir_inline.read_block_if_cached

    def recorded(fd: int, offset: int) -> bytes | None:
        block = cached(fd, offset)
        if block is None:
            misses.append(offset)
        return block

    monkeypatch.setattr(maildir_count, "read_block_if_cached", recorded)

    async def main() -> int:
        # Pages another CPU has just added can escape one eviction: try a few times.
        for _ in range(20):
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            octets = await count_wire_octets(str(path))
            assert octets == expected_octets(data)
            if misses:
                break
        return len(misses)

    assert asyncio.run(main()) > 0


def test_a_vanished_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        asyncio.run(count_wire_octets(str(tmp_path / "gone")))


def test_measure_leaves_a_big_file_uncounted_but_finds_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(big_text())
    mtime = path.stat().st_mtime_ns
    measured = measure_file(str(path), octets=True, mtime=True, x_uidl=True, count_up_to=1000)
    assert measured == Measured(None, mtime, "big-one")
    small = measure_file(str(path), octets=True, mtime=False, x_uidl=False)
    assert small == Measured(expected_octets(big_text()), None, None)


def test_the_snapshot_asks_for_big_counts_then_takes_them(tmp_path: Path) -> None:
    root = maildir(tmp_path)
    data = big_text()
    (root / "new" / NAME).write_bytes(data)
    small = b"Subject: small\n\nhi\n"
    (root / "new" / "1700000001.M2P1.host").write_bytes(small)
    with pytest.raises(CountFirst) as asked:
        take_snapshot(str(root), count_up_to=BIG_MESSAGE)
    assert asked.value.paths == {NAME: str(root / "new" / NAME)}
    assert not (root / CACHE_FILE_NAME).exists()  # nothing saved half-learnt

    octets = asyncio.run(count_wire_octets(asked.value.paths[NAME]))
    snapshot = take_snapshot(str(root), counted={NAME: octets}, count_up_to=BIG_MESSAGE)
    assert [(m.unique_id, m.octets) for m in snapshot.listing] == [
        (NAME, expected_octets(data)),
        ("1700000001.M2P1.host", expected_octets(small)),
    ]
    assert (root / CACHE_FILE_NAME).exists()


def test_open_counts_a_big_new_message_through_the_pacer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pacing, "FOREGROUND_WINDOW", 60.0)
    pacing.foreground()  # a quiet client is being served: background steps are paced
    root = maildir(tmp_path)
    data = big_text()
    (root / "new" / NAME).write_bytes(data)
    store = MaildirStore(str(tmp_path / "%u" / "Maildir"))

    async def main() -> tuple[list[int], int]:
        seen: list[int] = []
        opening = asyncio.create_task(store.open("alice"))
        while not opening.done():
            seen.append(pacing.waiting())
            await asyncio.sleep(0)
        drop = await opening
        try:
            return seen, drop.listing[0].octets
        finally:
            await drop.close()

    seen, octets = asyncio.run(main())
    assert octets == expected_octets(data)
    assert max(seen) >= 1  # the count waited for background steps on the event loop
