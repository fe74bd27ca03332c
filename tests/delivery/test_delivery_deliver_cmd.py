"""`popbox deliver USER... < message`: deliver_main's sysexits statuses and stored bytes."""

from __future__ import annotations

import asyncio
import os
from contextlib import aclosing
from pathlib import Path

import pytest

from popbox.auth.passwdfile import PasswdFileAuthenticator
from popbox.delivery.deliver_cmd import (
    EX_DATAERR,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
    deliver_main,
)
from popbox.storage.maildir import MaildirStore

USERS = "alice:{PLAIN}secret\nbob@example.org:{PLAIN}secret\n"
MESSAGE = b"From: <sender@example.net>\nSubject: piped\n\nbody\n"


def setup(
    tmp_path: Path, template: str = "%u/Maildir"
) -> tuple[MaildirStore, PasswdFileAuthenticator]:
    users = tmp_path / "users"
    users.write_text(USERS)
    return MaildirStore(str(tmp_path / "mail" / template)), PasswdFileAuthenticator(users)


def maildrop(store: MaildirStore, user: str) -> list[bytes]:
    async def main() -> list[bytes]:
        drop = await store.open(user)
        try:
            messages = []
            for info in drop.listing:
                async with aclosing(drop.read(info.key)) as blocks:
                    messages.append(b"".join([block async for block in blocks]))
            return messages
        finally:
            await drop.close()

    return asyncio.run(main())


def new_files(tmp_path: Path, user: str) -> list[str]:
    new = tmp_path / "mail" / user / "Maildir" / "new"
    return os.listdir(new) if new.is_dir() else []


def test_delivers_to_every_user(tmp_path: Path) -> None:
    store, auth = setup(tmp_path)
    assert deliver_main(store, auth, ["alice", "bob@example.org"], MESSAGE) == EX_OK
    assert maildrop(store, "alice") == [MESSAGE]
    assert maildrop(store, "bob@example.org") == [MESSAGE]


def test_stored_form(tmp_path: Path) -> None:
    """A leading mbox From_ line (Postfix pipe flag F) goes; CRLF becomes LF."""
    store, auth = setup(tmp_path)
    piped = b"From sender@example.net  Thu Jan  1 00:00:00 2026\r\nSubject: x\r\n\r\nbody\r\n"
    assert deliver_main(store, auth, ["alice"], piped) == EX_OK
    assert maildrop(store, "alice") == [b"Subject: x\n\nbody\n"]


def test_a_user_named_twice_gets_one_copy(tmp_path: Path) -> None:
    store, auth = setup(tmp_path)
    assert deliver_main(store, auth, ["alice", "alice"], MESSAGE) == EX_OK
    assert maildrop(store, "alice") == [MESSAGE]


def test_unknown_user_delivers_to_nobody(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, auth = setup(tmp_path)
    assert deliver_main(store, auth, ["alice", "nobody"], MESSAGE) == EX_NOUSER
    assert "user unknown: nobody" in capsys.readouterr().err
    assert new_files(tmp_path, "alice") == []


def test_store_failure_is_temporary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, auth = setup(tmp_path)
    broken = tmp_path / "mail" / "alice" / "Maildir"
    broken.mkdir(parents=True)
    (broken / "tmp").write_bytes(b"")  # a file where tmp/ belongs: fails even for root
    assert deliver_main(store, auth, ["alice", "bob@example.org"], MESSAGE) == EX_TEMPFAIL
    assert "alice: temporary failure" in capsys.readouterr().err
    # The other user is served all the same.
    assert maildrop(store, "bob@example.org") == [MESSAGE]


def test_unreadable_user_list_is_temporary(tmp_path: Path) -> None:
    store, auth = setup(tmp_path)
    users = tmp_path / "users"
    users.unlink()
    users.mkdir()  # reading it fails, even as root
    assert deliver_main(store, auth, ["alice"], MESSAGE) == EX_TEMPFAIL


def test_temporary_outranks_permanent(tmp_path: Path) -> None:
    """alice can have no maildrop under %d/%n (no domain); bob@example.org's store fails
    for now: 75, so that the MTA retries instead of bouncing bob's copy."""
    store, auth = setup(tmp_path, template="%d/%n/Maildir")
    broken = tmp_path / "mail" / "example.org" / "bob" / "Maildir"
    broken.mkdir(parents=True)
    (broken / "tmp").write_bytes(b"")
    assert deliver_main(store, auth, ["alice", "bob@example.org"], MESSAGE) == EX_TEMPFAIL
    assert deliver_main(store, auth, ["alice"], MESSAGE) == EX_NOUSER


@pytest.mark.parametrize(
    ("users", "message", "status"), [([], MESSAGE, EX_USAGE), (["alice"], b"", EX_DATAERR)]
)
def test_bad_input(tmp_path: Path, users: list[str], message: bytes, status: int) -> None:
    store, auth = setup(tmp_path)
    assert deliver_main(store, auth, users, message) == status
    assert new_files(tmp_path, "alice") == []
