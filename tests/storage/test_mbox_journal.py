"""The mbox append journal (storage/mbox_journal.py): a delivery killed in the middle of
its write leaves a note, and the next locker (a POP3 session or a delivery) cuts the half
record off, keeps a whole one, and leaves the file alone if another program appended
since."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from test_mbox_support import mbox_path, messages_of, run, store_at

from popbox.storage.mbox_deliver import build_record
from popbox.storage.mbox_journal import JOURNAL_SUFFIX, begin_append

FIRST = b"Subject: one\n\nfirst message\n"
SECOND = b"Subject: two\n\nFrom inside the body\n" + b"x" * 5000 + b"\n"


def delivered_once(tmp_path: Path) -> tuple[Path, int]:
    run(store_at(tmp_path, "mboxrd").deliver("alice", FIRST))
    path = mbox_path(tmp_path)
    assert not Path(str(path) + JOURNAL_SUFFIX).exists()  # a finished append leaves none
    return path, path.stat().st_size


def crashed_append(path: Path, cut: int | None) -> bytes:
    """What a delivery of SECOND killed after `cut` octets leaves (None: all written)."""
    size = path.stat().st_size
    data = build_record(SECOND, "mboxrd", "someone@example.org", 0.0)  # no lead: ends "\n\n"
    begin_append(str(path), size, size + len(data), path.stat().st_ino)
    with path.open("ab") as mbox:
        mbox.write(data if cut is None else data[:cut])
    return data


def listed(tmp_path: Path) -> list[bytes]:
    async def scenario() -> list[bytes]:
        maildrop = await store_at(tmp_path, "mboxrd").open("alice")
        try:
            return [
                b"".join([block async for block in maildrop.read(m.key)]) for m in maildrop.listing
            ]
        finally:
            await maildrop.close()

    return run(scenario())


@pytest.mark.parametrize("cut", [1, 2, 30, 3000])
def test_a_half_record_is_cut_off_by_the_next_session(
    tmp_path: Path, cut: int, caplog: pytest.LogCaptureFixture
) -> None:
    path, before = delivered_once(tmp_path)
    crashed_append(path, cut)
    with caplog.at_level(logging.WARNING):
        assert listed(tmp_path) == [FIRST]
    assert path.stat().st_size == before
    assert not Path(str(path) + JOURNAL_SUFFIX).exists()
    assert f"removed a partial message ({cut} octets)" in caplog.text


def test_a_half_record_is_cut_off_by_the_next_delivery(tmp_path: Path) -> None:
    path, _ = delivered_once(tmp_path)
    crashed_append(path, 100)
    run(store_at(tmp_path, "mboxrd").deliver("alice", b"Subject: three\n\nthird\n"))
    assert messages_of(tmp_path, "mboxrd") == [FIRST, b"Subject: three\n\nthird\n"]


def test_a_whole_record_stays(tmp_path: Path) -> None:
    path, _ = delivered_once(tmp_path)
    crashed_append(path, None)
    assert listed(tmp_path) == [FIRST, SECOND]
    assert not Path(str(path) + JOURNAL_SUFFIX).exists()


def test_mail_another_program_appended_after_the_crash_is_not_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = delivered_once(tmp_path)
    crashed_append(path, 200)
    foreign = b"\n\nFrom postfix@example.org Thu Jan  1 00:00:00 2026\nSubject: p\n\npostfix\n"
    with path.open("ab") as mbox:
        mbox.write(foreign)
    size = path.stat().st_size
    with caplog.at_level(logging.ERROR):
        messages = listed(tmp_path)
    assert path.stat().st_size == size
    assert messages[-1] == b"Subject: p\n\npostfix\n"
    assert "changed after an interrupted delivery" in caplog.text


def test_a_malformed_note_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, before = delivered_once(tmp_path)
    Path(str(path) + JOURNAL_SUFFIX).write_bytes(b"not a note\n")
    with caplog.at_level(logging.ERROR):
        assert listed(tmp_path) == [FIRST]
    assert path.stat().st_size == before
    assert not Path(str(path) + JOURNAL_SUFFIX).exists()
    assert "malformed append journal" in caplog.text


def test_a_note_for_a_replaced_file_is_dropped(tmp_path: Path) -> None:
    path, before = delivered_once(tmp_path)
    Path(str(path) + JOURNAL_SUFFIX).write_bytes(b"0 5 %d\n" % (path.stat().st_ino + 1))
    assert listed(tmp_path) == [FIRST]
    assert path.stat().st_size == before
    assert not os.path.exists(str(path) + JOURNAL_SUFFIX)
