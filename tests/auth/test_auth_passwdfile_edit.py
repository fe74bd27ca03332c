"""Editing a Dovecot passwd-file for `popbox user add|passwd|del|list`: atomic, lossless."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from popbox.auth.base import AuthOutcome, AuthResult
from popbox.auth.passwdfile import (
    NoSuchUser,
    PasswdFileAuthenticator,
    PasswdFileError,
    UserExists,
    add_user,
    delete_user,
    list_users,
    set_password,
)
from popbox.auth.schemes import UnknownScheme
from popbox.auth.usernames import InvalidUsername

PASSWORD = "Tr0ub4dor&3"
INVALID = AuthResult(AuthOutcome.INVALID_CREDENTIALS)

# Comments, a blank line, extra fields with ':' and spaces, a CRLF line, a line Dovecot
# skips, a duplicate user (the first counts), a name-only line, and no final newline.
USERS_FILE = (
    b"# popbox users\n"
    b"\n"
    b"alice:{SSHA256}utz3MT1Pjxv8Afp3oRNFQkatdjWYtOiLp1MwopIk+Xyl6ht0:1000:1000:Alice A.:"
    b"/home/alice:/bin/sh:userdb_mail=maildir:~/Mail quota_rule=*:storage=1G\n"
    b"bob:{PLAIN}bobs secret\n"
    b"crypt:$1$ax0OZ6nI$rn4mWa2kyr5CD2rXmQrhZ0\n"
    b"carol:{PLAIN}carol\r\n"
    b"  # indented: not a comment for Dovecot, but no valid user either\n"
    b":{PLAIN}nobody\n"
    b"bob:{PLAIN}second bob is ignored\n"
    b"broken:{SHA256}!!!\n"
    b"dave"
)
Edit = Callable[[Path], None]


def write(path: Path, data: bytes, mode: int = 0o640) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return write(tmp_path / "users", USERS_FILE)


def check_password(path: Path, user: str, password: str) -> AuthResult:
    return asyncio.run(PasswdFileAuthenticator(path).verify_password(user, password))


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


def no_leftovers(directory: Path, *names: str) -> None:
    assert sorted(os.listdir(directory)) == sorted(names)


def test_add_user_creates_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    add_user(path, "alice", PASSWORD, scheme="SSHA256")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = path.read_bytes()
    assert data.startswith(b"alice:{SSHA256}")
    assert data.endswith(b"\n")
    assert data.count(b"\n") == 1
    assert check_password(path, "alice", PASSWORD) == AuthResult(AuthOutcome.OK, "alice")
    no_leftovers(tmp_path, "users")


def test_empty_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as excinfo:
        add_user(tmp_path / "users", "alice", "", scheme="PLAIN")
    assert str(excinfo.value) == "a password cannot be empty"
    no_leftovers(tmp_path)


def test_add_user_default_scheme_is_argon2id(tmp_path: Path) -> None:
    path = tmp_path / "users"
    add_user(path, "alice", PASSWORD)
    assert path.read_bytes().startswith(b"alice:{ARGON2ID}$argon2id$")
    assert check_password(path, "alice", PASSWORD).ok


def test_add_user_preserves_everything_else(users: Path) -> None:
    before = users.stat()
    add_user(users, "erin", "erin pw", scheme="PLAIN")
    # "dave" had no final newline: it gets one, then the new line follows.
    assert users.read_bytes() == USERS_FILE + b"\nerin:{PLAIN}erin pw\n"
    after = users.stat()
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert after.st_ino != before.st_ino  # replaced, not rewritten in place
    no_leftovers(users.parent, "users")


def test_add_existing_user_fails_and_changes_nothing(users: Path) -> None:
    before = users.stat()
    with pytest.raises(UserExists) as excinfo:
        add_user(users, "bob", "x", scheme="PLAIN")
    assert str(excinfo.value) == f"{users}: user bob already exists"
    assert users.read_bytes() == USERS_FILE
    assert users.stat().st_ino == before.st_ino


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda p: add_user(p, "../x", "pw", scheme="PLAIN"), InvalidUsername),
        (lambda p: add_user(p, "x", "pw", scheme="ROT13"), UnknownScheme),
        (lambda p: set_password(p, "a b", "pw", scheme="PLAIN"), InvalidUsername),
        (lambda p: delete_user(p, "#x"), InvalidUsername),
    ],
)
def test_bad_input_is_refused_before_touching_the_file(
    tmp_path: Path, call: Edit, error: type[Exception]
) -> None:
    path = tmp_path / "users"
    with pytest.raises(error):
        call(path)
    no_leftovers(tmp_path)


def test_set_password_changes_only_the_password_field(users: Path) -> None:
    set_password(users, "alice", "new pw", scheme="PLAIN")
    expected = USERS_FILE.split(b"\n")
    expected[2] = (
        b"alice:{PLAIN}new pw:1000:1000:Alice A.:/home/alice:/bin/sh:"
        b"userdb_mail=maildir:~/Mail quota_rule=*:storage=1G"
    )
    assert lines_of(users) == expected
    assert stat.S_IMODE(users.stat().st_mode) == 0o640
    assert check_password(users, "alice", "new pw").ok
    assert check_password(users, "alice", PASSWORD) == INVALID
    no_leftovers(users.parent, "users")


def test_set_password_keeps_crlf_and_edits_the_first_duplicate(users: Path) -> None:
    set_password(users, "carol", "c2", scheme="PLAIN")
    set_password(users, "bob", "b2", scheme="PLAIN")
    set_password(users, "dave", "d2", scheme="PLAIN")
    expected = USERS_FILE.split(b"\n")
    expected[3] = b"bob:{PLAIN}b2"
    expected[5] = b"carol:{PLAIN}c2\r"
    assert expected[8] == b"bob:{PLAIN}second bob is ignored"
    expected[10] = b"dave:{PLAIN}d2"
    assert lines_of(users) == expected


def test_set_password_of_unknown_user(users: Path) -> None:
    with pytest.raises(NoSuchUser) as excinfo:
        set_password(users, "zoe", "x", scheme="PLAIN")
    assert str(excinfo.value) == f"{users}: no user zoe"
    assert users.read_bytes() == USERS_FILE


def test_delete_user_removes_every_line_of_the_user(users: Path) -> None:
    delete_user(users, "bob")
    expected = [line for line in USERS_FILE.split(b"\n") if not line.startswith(b"bob:")]
    assert lines_of(users) == expected
    assert check_password(users, "bob", "second bob is ignored") == INVALID
    assert stat.S_IMODE(users.stat().st_mode) == 0o640
    no_leftovers(users.parent, "users")


def test_delete_last_user_leaves_an_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "users", b"alice:{PLAIN}a\n")
    delete_user(path, "alice")
    assert path.read_bytes() == b""
    assert list_users(path) == []


def test_delete_unknown_user(users: Path) -> None:
    with pytest.raises(NoSuchUser) as excinfo:
        delete_user(users, "zoe")
    assert str(excinfo.value) == f"{users}: no user zoe"


@pytest.mark.parametrize(
    "call",
    [lambda p: delete_user(p, "bob"), lambda p: set_password(p, "bob", "x", scheme="PLAIN")],
)
def test_editing_a_missing_file(tmp_path: Path, call: Edit) -> None:
    path = tmp_path / "users"
    with pytest.raises(PasswdFileError) as excinfo:
        call(path)
    assert str(excinfo.value) == f"{path}: no such file"
    no_leftovers(tmp_path)


def test_list_users(users: Path, tmp_path: Path) -> None:
    assert list_users(users) == ["alice", "bob", "crypt", "carol", "broken", "dave"]
    with pytest.raises(PasswdFileError) as excinfo:
        list_users(tmp_path / "missing")
    assert str(excinfo.value) == f"{tmp_path / 'missing'}: cannot read: No such file or directory"


def test_editing_through_a_symlink_edits_the_target(users: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(users)
    add_user(link, "erin", "e", scheme="PLAIN")
    assert link.is_symlink()
    assert users.read_bytes() == USERS_FILE + b"\nerin:{PLAIN}e\n"


def test_running_authenticator_sees_edits(users: Path) -> None:
    authenticator = PasswdFileAuthenticator(users)

    async def scenario() -> list[AuthResult]:
        first = await authenticator.verify_password("erin", "e")
        add_user(users, "erin", "e", scheme="PLAIN")
        second = await authenticator.verify_password("erin", "e")
        delete_user(users, "erin")
        third = await authenticator.verify_password("erin", "e")
        return [first, second, third]

    assert asyncio.run(scenario()) == [INVALID, AuthResult(AuthOutcome.OK, "erin"), INVALID]
