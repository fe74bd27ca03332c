"""Delivery into an mbox: the record as Postfix writes it, exact bytes read back, the empty
line before each separator, creation mode, and truncation back on failure."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_mbox_support import mbox_path, messages_of, record, run, store_at

from popbox.storage.base import InvalidMaildropUser, StoreError
from popbox.storage.mbox import MboxStore
from popbox.storage.mbox_deliver import build_record
from popbox.storage.mbox_format import MboxFormat

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

TRICKY = (
    b"Subject: tricky\r\nX-UIDL: tricky-1\r\n\r\nFrom the start.\r\n>From quoted.\r\n"
    b">>From twice.\r\n\r\nFrom after a blank line.\r\n.dot\r\nbare\rCR\r\nno final line end"
)


def test_deliver_then_read_back_byte_for_byte_mboxrd(tmp_path: Path) -> None:
    store = store_at(tmp_path, "mboxrd")
    messages = [TRICKY, b"Subject: two\n\nsecond\n", b"", b"Subject: 4\n\nends blank\n\n"]
    for message in messages:
        run(store.deliver("alice", message))
    expected = [m.replace(b"\r\n", b"\n") for m in messages]
    expected[0] += b"\n"  # the missing final line end is added, as Postfix does
    assert messages_of(tmp_path, "mboxrd") == expected
    assert stat.S_IMODE(mbox_path(tmp_path).stat().st_mode) == 0o600


def test_mboxo_delivery_quotes_from_lines_for_good(tmp_path: Path) -> None:
    store = store_at(tmp_path, "mboxo")
    run(store.deliver("alice", TRICKY))
    [message] = messages_of(tmp_path, "mboxo")
    assert message == (
        b"Subject: tricky\nX-UIDL: tricky-1\n\n>From the start.\n>From quoted.\n"
        b">>From twice.\n\n>From after a blank line.\n.dot\nbare\rCR\nno final line end\n"
    )


@pytest.mark.parametrize("mbox_format", ["mboxo", "mboxrd"])
def test_record_format(mbox_format: MboxFormat) -> None:
    built = build_record(b"A: b\r\n\r\nFrom x\r\n", mbox_format, "<bob@example.org>", 0.0)
    assert built == b"From bob@example.org Thu Jan  1 00:00:00 1970\nA: b\n\n>From x\n\n"
    assert build_record(b"", mbox_format, "<>", 0.0).startswith(b"From MAILER-DAEMON Thu ")
    assert build_record(b"", mbox_format, "a b\nc", 0.0).startswith(b"From a_b_c Thu ")


@pytest.mark.parametrize(
    ("existing", "lead"),
    [
        (b"", b""),
        (record(b"A: b\n\nc\n"), b""),
        (b"From x\nA: b\n\nc\n", b"\n"),  # no empty line after the last message
        (b"From x\nA: b\n\nc", b"\n\n"),  # not even a final LF
        (b"\n", b"\n"),
    ],
)
def test_an_empty_line_precedes_every_separator(
    tmp_path: Path, existing: bytes, lead: bytes
) -> None:
    path = mbox_path(tmp_path)
    path.write_bytes(existing)
    run(store_at(tmp_path).deliver("alice", b"N: 1\n\nnew\n", envelope_sender="s@x"))
    data = path.read_bytes()
    assert data.startswith(existing + lead + b"From s@x ")
    assert data.endswith(b"\nN: 1\n\nnew\n\n")
    assert messages_of(tmp_path)[-1] == b"N: 1\n\nnew\n"


def test_failed_write_is_truncated_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = mbox_path(tmp_path)
    path.write_bytes(record(b"A: b\n\nold\n"))
    before = path.read_bytes()
    inode = path.stat().st_ino
    real_write = os.write

    def failing_write(fd: int, data: ReadableBuffer) -> int:
        if os.fstat(fd).st_ino != inode:
            return real_write(fd, data)
        if os.fstat(fd).st_size == len(before):
            return real_write(fd, memoryview(data)[:10])  # half the record lands
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(StoreError, match="No space left"):
        run(store_at(tmp_path).deliver("alice", b"A: b\n\nnew message\n"))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not (tmp_path / "alice.lock").exists()


def test_failed_fsync_is_truncated_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = mbox_path(tmp_path)
    path.write_bytes(b"")

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StoreError):
        run(store_at(tmp_path).deliver("alice", b"A: b\n\nnew\n"))
    monkeypatch.undo()
    assert path.read_bytes() == b""


def test_deliver_creates_missing_directories(tmp_path: Path) -> None:
    store = MboxStore(str(tmp_path / "home" / "%u" / "mail" / "inbox"))
    run(store.deliver("alice", b"A: b\n\nc\n"))
    inbox = tmp_path / "home" / "alice" / "mail" / "inbox"
    assert inbox.read_bytes().endswith(b"\nA: b\n\nc\n\n")


def test_invalid_users_touch_nothing(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    for user in ("", "..", "a/b", ".hidden"):
        with pytest.raises(InvalidMaildropUser):
            run(store.deliver(user, b"x"))
        with pytest.raises(InvalidMaildropUser):
            run(store.open(user))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "user",
    [
        "alice.lock",  # alice's dotlock: removed as stale by her next session
        "alice.popbox",  # her retrieval cache: overwritten
        "alice.popbox-index",  # her index: overwritten
        "alice.popbox-append",  # her append journal: removed
        "a.popbox-tmp.x",
    ],
)
def test_users_whose_mbox_would_be_a_file_beside_another_are_refused(
    tmp_path: Path, user: str
) -> None:
    store = store_at(tmp_path)
    run(store.deliver("alice", b"Subject: a\n\nalice\n"))
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    with pytest.raises(InvalidMaildropUser, match="named like another's"):
        run(store.deliver(user, b"Subject: lost\n\nmail\n"))
    with pytest.raises(InvalidMaildropUser, match="named like another's"):
        run(store.open(user))
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_names_that_only_look_alike_are_users(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    for user in ("alice.locked", "alicelock", "alice.popboxes", "lock"):
        run(store.deliver(user, b"Subject: a\n\nb\n"))
    assert sorted(os.listdir(tmp_path)) == ["alice.locked", "alice.popboxes", "alicelock", "lock"]
    # Where the mbox is not named after the user, any user name is safe.
    inbox = MboxStore(str(tmp_path / "home" / "%u" / "inbox"))
    run(inbox.deliver("bob.lock", b"Subject: a\n\nb\n"))
    assert (tmp_path / "home" / "bob.lock" / "inbox").is_file()


@pytest.mark.parametrize(
    ("template", "options"),
    [
        ("", {}),
        ("/var/mail/all", {}),
        ("/var/mail/%x", {}),
        ("/var/mail/%u/", {}),
        ("/var/mail/%u", {"dotlock_stale": 0.0}),
        ("/var/mail/%u", {"lock_timeout": -1.0}),
    ],
)
def test_bad_configuration_is_refused(template: str, options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MboxStore(template, **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MboxStore("/var/mail/%u", mbox_format="mmdf")  # type: ignore[arg-type]


def test_location_expands_user_fields() -> None:
    store = MboxStore("/var/mail/%d/%n")
    assert store.location("alice@example.org") == "/var/mail/example.org/alice"
    assert repr(store) == "MboxStore('/var/mail/%d/%n', mbox_format='mboxo')"
