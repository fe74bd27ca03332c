"""Dovecot passwd-file: parsing, reloading, authentication and atomic editing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from popbox.auth import passwdfile, schemes
from popbox.auth.base import AuthOutcome, AuthResult
from popbox.auth.passwdfile import (
    PasswdEntry,
    PasswdFile,
    PasswdFileAuthenticator,
    parse_line,
    parse_passwd_file,
)

PASSWORD = "Tr0ub4dor&3"
# `doveadm pw -s SSHA256 -p 'Tr0ub4dor&3'` and `-s SHA512-CRYPT` (Dovecot 2.3.19.1)
SSHA256 = "{SSHA256}utz3MT1Pjxv8Afp3oRNFQkatdjWYtOiLp1MwopIk+Xyl6ht0"
SHA512_CRYPT = (
    "$6$ffRRgm2js47enmS.$krrDuXS/uU/FM31b3ZVf2DAp/uk.Ep7z3gv1zTzjQGl3rwsEaz9ezhnP9.YrYwc78E"
    "iCuLFGRZhGhdQUAiFgX."
)
INVALID = AuthResult(AuthOutcome.INVALID_CREDENTIALS)
TEMPORARY = AuthResult(AuthOutcome.TEMPORARY_FAILURE)

USERS_FILE = (
    b"# popbox users\n"
    b"\n"
    b"alice:" + SSHA256.encode() + b":1000:1000:Alice A.:/home/alice:/bin/sh:"
    b"userdb_mail=maildir:~/Mail quota_rule=*:storage=1G\n"
    b"bob:{PLAIN}bobs secret\n"
    b"crypt:" + SHA512_CRYPT.encode() + b"\n"
    b"carol:{PLAIN}carol\r\n"
    b"  # indented: not a comment for Dovecot, but no valid user either\n"
    b":{PLAIN}nobody\n"
    b"bob:{PLAIN}second bob is ignored\n"
    b"broken:{SHA256}!!!\n"
    b"dave"
)


def write(path: Path, data: bytes, mode: int = 0o640) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return write(tmp_path / "users", USERS_FILE)


# --- parsing ------------------------------------------------------------------------


def test_parse_full_line_keeps_extra_fields_with_colons() -> None:
    line = "alice:{PLAIN}x:1000:100:Alice:/home/alice:/bin/sh:mail=maildir:~/M quota=1G"
    assert parse_line(line) == PasswdEntry(
        user="alice",
        secret="{PLAIN}x",
        uid="1000",
        gid="100",
        gecos="Alice",
        home="/home/alice",
        shell="/bin/sh",
        extra_fields="mail=maildir:~/M quota=1G",
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("bob:{PLAIN}b", PasswdEntry("bob", "{PLAIN}b")),
        ("bob:{PLAIN}b\r", PasswdEntry("bob", "{PLAIN}b")),
        ("bob", PasswdEntry("bob", "")),
        ("bob:", PasswdEntry("bob", "")),
        ("bob:$1$s$h::::/home/bob", PasswdEntry("bob", "$1$s$h", home="/home/bob")),
        ("", None),
        ("\r", None),
        ("# comment:with:colons", None),
        (":{PLAIN}no user", None),
    ],
)
def test_parse_line(line: str, expected: PasswdEntry | None) -> None:
    assert parse_line(line) == expected


def test_parse_file_first_line_wins_and_invalid_names_are_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="popbox.auth.passwdfile"):
        entries = parse_passwd_file(USERS_FILE, "users")
    assert list(entries) == ["alice", "bob", "crypt", "carol", "broken", "dave"]
    assert entries["bob"].secret == "{PLAIN}bobs secret"
    assert entries["carol"].secret == "{PLAIN}carol"
    assert entries["alice"].extra_fields == "userdb_mail=maildir:~/Mail quota_rule=*:storage=1G"
    assert entries["dave"] == PasswdEntry("dave", "")
    assert [record.getMessage() for record in caplog.records] == [
        "users line 7: skipped: user name contains whitespace",
        "users line 9: user bob exists more than once",
    ]


def test_entry_repr_hides_the_secret() -> None:
    entry = PasswdEntry("alice", "{PLAIN}hunter2", home="/home/alice")
    assert "hunter2" not in repr(entry)
    assert repr(entry) == (
        "PasswdEntry(user='alice', uid='', gid='', gecos='', home='/home/alice', shell='', "
        "extra_fields='')"
    )


# --- reloading ------------------------------------------------------------------------


def count_parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = passwdfile.parse_passwd_file

    def spy(data: bytes, path: str = "passwd-file") -> dict[str, PasswdEntry]:
        calls.append(1)
        return real(data, path)

    monkeypatch.setattr(passwdfile, "parse_passwd_file", spy)
    return calls


def test_unchanged_file_is_parsed_once(users: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_parses(monkeypatch)
    db = PasswdFile(users)
    for _ in range(3):
        assert db.lookup("bob") == PasswdEntry("bob", "{PLAIN}bobs secret")
    assert db.lookup("nobody") is None
    assert len(calls) == 1


def test_reload_when_mtime_changes_even_with_same_size(
    users: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_parses(monkeypatch)
    db = PasswdFile(users)
    assert db.lookup("bob") is not None
    before = users.stat()
    users.write_bytes(USERS_FILE.replace(b"bob:", b"rob:"))
    os.utime(users, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert users.stat().st_size == before.st_size
    assert db.lookup("bob") is None
    assert db.lookup("rob") == PasswdEntry("rob", "{PLAIN}bobs secret")
    assert len(calls) == 2


def test_reload_when_file_is_replaced_with_same_mtime(users: Path) -> None:
    db = PasswdFile(users)
    assert db.lookup("bob") is not None
    before = users.stat()
    replacement = write(users.with_name("new"), USERS_FILE.replace(b"bob:", b"rob:"))
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(replacement, users)
    assert users.stat().st_ino != before.st_ino
    assert db.lookup("bob") is None
    assert db.lookup("rob") is not None


def test_missing_file_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        PasswdFile(tmp_path / "missing").lookup("bob")


# --- authentication -----------------------------------------------------------------


def check_password(path: Path, user: str, password: str) -> AuthResult:
    return asyncio.run(PasswdFileAuthenticator(path).verify_password(user, password))


def check_apop(path: Path, user: str, timestamp: str, digest: str) -> AuthResult:
    return asyncio.run(PasswdFileAuthenticator(path).verify_apop(user, timestamp, digest))


@pytest.mark.parametrize(
    ("user", "password"),
    [("alice", PASSWORD), ("bob", "bobs secret"), ("crypt", PASSWORD), ("carol", "carol")],
)
def test_password_accepted(users: Path, user: str, password: str) -> None:
    assert check_password(users, user, password) == AuthResult(AuthOutcome.OK, user)


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("alice", "wrong"),
        ("bob", "second bob is ignored"),
        ("crypt", ""),
        ("nobody", PASSWORD),
        ("Alice", PASSWORD),
        ("dave", ""),  # no password field: never logs in
        ("broken", "x"),  # malformed secret: logged, refused
    ],
)
def test_unknown_user_and_wrong_password_look_the_same(
    users: Path, user: str, password: str
) -> None:
    assert check_password(users, user, password) == INVALID


def test_empty_password_is_always_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "users", b"empty:{PLAIN}\n")
    assert check_password(path, "empty", "") == INVALID


def test_unknown_user_still_costs_a_verification(
    users: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, bool]] = []
    real = schemes.verify

    def spy(password: str, stored: str, *, default_scheme: str = "CRYPT") -> bool:
        calls.append(
            (stored.split("$", 2)[0], threading.current_thread() is threading.main_thread())
        )
        return real(password, stored, default_scheme=default_scheme)

    monkeypatch.setattr(schemes, "verify", spy)
    assert check_password(users, "nobody", PASSWORD) == INVALID
    # A fixed ARGON2ID hash, verified in a worker thread, not on the event loop's thread.
    assert calls == [("{ARGON2ID}", False)]


class NoThreads(concurrent.futures.ThreadPoolExecutor):
    """A default executor that refuses work: proves a step never left the event loop."""

    def submit(self, *args: object, **kwargs: object) -> concurrent.futures.Future[Any]:
        raise AssertionError("a worker-thread hop")


def test_unchanged_file_and_digest_schemes_need_no_thread(users: Path) -> None:
    async def main() -> list[AuthResult]:
        auth = PasswdFileAuthenticator(users)
        first = await auth.verify_password("bob", "bobs secret")  # the file is read: a thread
        asyncio.get_running_loop().set_default_executor(NoThreads())
        results = [
            first,
            await auth.verify_password("bob", "bobs secret"),  # {PLAIN}
            await auth.verify_password("alice", PASSWORD),  # {SSHA256}
            await auth.verify_password("alice", "wrong"),
        ]
        with pytest.raises(AssertionError, match="worker-thread hop"):
            await auth.verify_password("crypt", PASSWORD)  # SHA512-CRYPT: 5000 rounds
        with pytest.raises(AssertionError, match="worker-thread hop"):
            await auth.verify_password("nobody", PASSWORD)  # the ARGON2ID dummy
        users.write_bytes(USERS_FILE + b"\nerin:{PLAIN}e\n")
        with pytest.raises(AssertionError, match="worker-thread hop"):
            await auth.verify_password("erin", "e")  # a changed file is read again
        return results

    ok = [AuthResult(AuthOutcome.OK, "bob"), AuthResult(AuthOutcome.OK, "bob")]
    assert asyncio.run(main()) == [*ok, AuthResult(AuthOutcome.OK, "alice"), INVALID]


def test_entries_if_unchanged(users: Path) -> None:
    db = PasswdFile(users)
    assert db.entries_if_unchanged() is None  # never read
    db.lookup("bob")
    entries = db.entries_if_unchanged()
    assert entries is not None and entries["bob"] == PasswdEntry("bob", "{PLAIN}bobs secret")
    before = users.stat()
    users.write_bytes(USERS_FILE.replace(b"bob:", b"rob:"))
    os.utime(users, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert db.entries_if_unchanged() is None
    assert db.lookup("rob") is not None
    assert db.entries_if_unchanged() is not None
    users.unlink()
    assert db.entries_if_unchanged() is None


def test_invalid_user_name_does_not_touch_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    # A missing file would be TEMPORARY_FAILURE: INVALID means it was never looked at.
    assert check_password(missing, "../etc/passwd", "x") == INVALID
    assert check_password(missing, "", "x") == INVALID
    assert check_apop(missing, "a:b", "<1@x>", "0" * 32) == INVALID
    assert check_password(missing, "bob", "x") == TEMPORARY


def test_unreadable_file_is_a_temporary_failure(tmp_path: Path) -> None:
    assert check_password(tmp_path / "missing", "bob", "x") == TEMPORARY
    assert check_password(tmp_path, "bob", "x") == TEMPORARY  # a directory
    assert check_apop(tmp_path / "missing", "bob", "<1@x>", "0" * 32) == TEMPORARY


TIMESTAMP = "<1896.697170952@dbc.mtview.ca.us>"


def apop_digest(secret: str) -> str:
    return hashlib.md5((TIMESTAMP + secret).encode()).hexdigest()


def test_apop_rfc1939_example(tmp_path: Path) -> None:
    # RFC 1939 section 7: shared secret "tanstaaf".
    path = write(tmp_path / "users", b"mrose:{PLAIN}tanstaaf\n")
    digest = "c4c9334bac560ecc979e58001b3e22fb"
    assert check_apop(path, "mrose", TIMESTAMP, digest) == AuthResult(AuthOutcome.OK, "mrose")
    assert check_apop(path, "mrose", TIMESTAMP, digest.upper()) == AuthResult(
        AuthOutcome.OK, "mrose"
    )


def test_apop_plain_variants(tmp_path: Path) -> None:
    path = write(tmp_path / "users", b"b64:{PLAIN.B64}VHIwdWI0ZG9yJjM=\nclear:{CLEARTEXT}c\n")
    assert check_apop(path, "b64", TIMESTAMP, apop_digest(PASSWORD)).ok
    assert check_apop(path, "clear", TIMESTAMP, apop_digest("c")).ok


@pytest.mark.parametrize(
    ("user", "digest"),
    [
        ("bob", apop_digest("wrong")),
        ("bob", apop_digest("bobs secret")[:-1]),
        ("bob", "é" * 32),
        ("bob", ""),
        # Hashed secrets cannot do APOP; the answer does not say so.
        ("alice", apop_digest(PASSWORD)),
        ("crypt", apop_digest(SHA512_CRYPT)),
        ("crypt", apop_digest(PASSWORD)),
        ("nobody", apop_digest("bobs secret")),
    ],
)
def test_apop_refused(users: Path, user: str, digest: str) -> None:
    assert check_apop(users, user, TIMESTAMP, digest) == INVALID


def test_apop_plain_user_accepted(users: Path) -> None:
    result = check_apop(users, "bob", TIMESTAMP, apop_digest("bobs secret"))
    assert result == AuthResult(AuthOutcome.OK, "bob")


@pytest.mark.parametrize(
    ("extra", "expire_days"),
    [
        ("", None),
        ("userdb_expire_days=7", 7),
        ("userdb_quota_rule=*:storage=1G userdb_expire_days=0", 0),
        ("userdb_expire_days=-1", None),
        ("userdb_expire_days=", None),
        ("expire_days=3", None),
    ],
)
def test_user_settings_from_extra_fields(extra: str, expire_days: int | None) -> None:
    from popbox.auth.base import UserSettings, parse_user_settings  # noqa: PLC0415

    assert parse_user_settings(extra) == UserSettings(expire_days=expire_days)
