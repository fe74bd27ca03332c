"""mbox UIDLs: X-UIDL when usable, else a header digest made unique in file order; stable
across sessions and when other messages are deleted."""

from __future__ import annotations

import re
from pathlib import Path

from test_mbox_support import mbox_path, record, with_drop

from popbox.storage.base import DeleteResult
from popbox.storage.mbox import MboxMaildrop


def make_message(number: int, extra: bytes = b"") -> bytes:
    return b"Subject: m%d\nMessage-ID: <%d@x>\n%s\nbody %d\n" % (number, number, extra, number)


def unique_ids(tmp_path: Path) -> list[str]:
    async def body(drop: MboxMaildrop) -> list[str]:
        return [info.unique_id for info in drop.listing]

    return with_drop(tmp_path, body)


def delete_numbers(tmp_path: Path, numbers: list[int]) -> DeleteResult:
    """Delete messages by message number (1-based), as a client's DELE and QUIT would."""

    async def body(drop: MboxMaildrop) -> DeleteResult:
        return await drop.delete([drop.listing[n - 1].key for n in numbers])

    return with_drop(tmp_path, body)


def test_digest_uidls_are_stable_across_sessions_and_deletions(tmp_path: Path) -> None:
    mbox_path(tmp_path).write_bytes(b"".join(record(make_message(n)) for n in range(1, 6)))
    before = unique_ids(tmp_path)
    assert len(set(before)) == 5
    assert all(re.fullmatch("[0-9a-f]{32}", uid) for uid in before)
    assert unique_ids(tmp_path) == before
    assert delete_numbers(tmp_path, [1, 3]).failed == ()
    assert unique_ids(tmp_path) == [before[1], before[3], before[4]]


def test_x_uidl_is_honoured(tmp_path: Path) -> None:
    messages = [
        make_message(1, b"X-UIDL: 2a7b1c0d5e\n"),
        make_message(2),
        make_message(3, b"x-uidl:   <popper.3@host>\n"),
    ]
    mbox_path(tmp_path).write_bytes(b"".join(record(m) for m in messages))
    found = unique_ids(tmp_path)
    assert found[0] == "2a7b1c0d5e"
    assert found[2] == "<popper.3@host>"
    delete_numbers(tmp_path, [1])
    assert unique_ids(tmp_path) == found[1:]


def test_invalid_or_shared_x_uidl_falls_back_to_the_digest(tmp_path: Path) -> None:
    messages = [
        make_message(1, b"X-UIDL: has spaces\n"),
        make_message(2, b"X-UIDL: same\n"),
        make_message(3, b"X-UIDL: same\n"),
        make_message(4, b"X-UIDL: " + b"a" * 71 + b"\n"),
    ]
    mbox_path(tmp_path).write_bytes(b"".join(record(m) for m in messages))
    found = unique_ids(tmp_path)
    assert all(re.fullmatch("[0-9a-f]{32}", uid) for uid in found)
    assert len(set(found)) == 4


def test_identical_headers_get_suffixes_in_file_order(tmp_path: Path) -> None:
    twin = b"Subject: twin\nMessage-ID: <t@x>\n\n"
    messages = [twin + b"one\n", make_message(1), twin + b"two\n", twin + b"three\n"]
    mbox_path(tmp_path).write_bytes(b"".join(record(m) for m in messages))
    first, other, second, third = unique_ids(tmp_path)
    assert (second, third) == (f"{first}-2", f"{first}-3")
    assert other != first
    delete_numbers(tmp_path, [3])
    assert unique_ids(tmp_path) == [first, other, second]


def test_local_mail_readers_marking_messages_read_keep_the_uidl(tmp_path: Path) -> None:
    path = mbox_path(tmp_path)
    path.write_bytes(record(make_message(1)))
    before = unique_ids(tmp_path)
    # mutt or Dovecot rewrote the mbox, adding their status fields.
    path.write_bytes(record(b"Status: RO\nX-Status: A\n" + make_message(1)))
    assert unique_ids(tmp_path) == before
