"""RFC 8265 preparation of user names and passwords (for UTF8, RFC 6856), and its use by
the passwd-file reader, editor and authenticator."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from popbox.auth.base import AuthOutcome, AuthResult
from popbox.auth.passwdfile import (
    PasswdEntry,
    PasswdFileAuthenticator,
    add_user,
    delete_user,
    parse_passwd_file,
    set_password,
)
from popbox.auth.precis import canonical_username, normalize_password, normalize_username
from popbox.auth.usernames import InvalidUsername

INVALID = AuthResult(AuthOutcome.INVALID_CREDENTIALS)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("alice", "alice"),
        ("Alice", "Alice"),  # case preserved: passwd-files are case-sensitive
        ("alice+tag@example.org", "alice+tag@example.org"),
        ("\uff41\uff4c\uff49\uff43\uff45", "alice"),  # fullwidth -> ASCII (width mapping)
        ("\uff21\uff22\uff23", "ABC"),
        ("e\u0301", "\u00e9"),  # NFC
        ("\u00e9", "\u00e9"),
        ("\u5f20\u4f1f", "\u5f20\u4f1f"),
        ("\u0391\u03b8\u03b7\u03bd\u03ac", "\u0391\u03b8\u03b7\u03bd\u03ac"),
    ],
)
def test_normalize_username(name: str, expected: str) -> None:
    assert normalize_username(name) == expected


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "DISALLOWED/empty"),
        ("a b", "DISALLOWED/spaces"),
        ("a\u00a0b", "DISALLOWED/has_compat"),  # NO-BREAK SPACE
        ("snow\u2603man", "DISALLOWED/symbols"),
        ("\u2163", "DISALLOWED/has_compat"),  # ROMAN NUMERAL FOUR
        ("a\tb", "DISALLOWED/controls"),
        ("a\udcffb", "DISALLOWED/other"),  # a non-UTF-8 octet, surrogate-escaped
    ],
)
def test_disallowed_username(name: str, reason: str) -> None:
    with pytest.raises(InvalidUsername) as excinfo:
        normalize_username(name)
    assert str(excinfo.value) == f"user name is not allowed by RFC 8265 ({reason})"
    assert excinfo.value.__cause__ is None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a\uff0fb", "user name contains a '/'"),  # FULLWIDTH SOLIDUS -> '/'
        ("a\uff1ab", "user name contains a ':'"),  # FULLWIDTH COLON -> ':'
        ("\uff0e\uff0ex", "user name contains '..'"),
        ("\uff0ehidden", "user name starts with '.'"),
        ("a/b", "user name contains a '/'"),
    ],
)
def test_canonical_username_checks_after_width_mapping(name: str, message: str) -> None:
    with pytest.raises(InvalidUsername) as excinfo:
        canonical_username(name)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("Tr0ub4dor&3", "Tr0ub4dor&3"),
        ("correct horse", "correct horse"),
        ("a\u00a0b\u3000c", "a b c"),  # non-ASCII spaces -> U+0020
        ("cafe\u0301", "caf\u00e9"),  # NFC
        ("\uff21\uff22", "\uff21\uff22"),  # no width mapping for passwords
        ("PASSword", "PASSword"),
    ],
)
def test_normalize_password(password: str, expected: str) -> None:
    assert normalize_password(password) == expected


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("", "DISALLOWED/empty"),
        ("a\tb", "DISALLOWED/controls"),
        ("a\x00b", "DISALLOWED/controls"),
        ("p\udce4ss", "DISALLOWED/other"),
    ],
)
def test_disallowed_password_never_echoed(password: str, reason: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        normalize_password(password)
    assert str(excinfo.value) == f"password is not allowed by RFC 8265 ({reason})"
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__context__ is None or excinfo.value.__suppress_context__


# --- the passwd-file ------------------------------------------------------------------


def test_file_names_are_compared_in_canonical_form(caplog: pytest.LogCaptureFixture) -> None:
    data = (
        "caf\u00e9:{PLAIN}x\n"
        "cafe\u0301:{PLAIN}second\n"  # the same name after NFC: a duplicate
        "\uff4a\uff4f\uff45:{PLAIN}y\n"  # fullwidth joe
        "snow\u2603:{PLAIN}z\n"
        "Joe:{PLAIN}w\n"
    ).encode()
    with caplog.at_level(logging.WARNING, logger="popbox.auth.passwdfile"):
        entries = parse_passwd_file(data, "users")
    assert entries == {
        "caf\u00e9": PasswdEntry("caf\u00e9", "{PLAIN}x"),
        "joe": PasswdEntry("joe", "{PLAIN}y"),
        "Joe": PasswdEntry("Joe", "{PLAIN}w"),
    }
    assert [record.getMessage() for record in caplog.records] == [
        "users line 2: user caf\u00e9 exists more than once",
        "users line 4: skipped: user name is not allowed by RFC 8265 (DISALLOWED/symbols)",
    ]


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_bytes(
        "cafe\u0301:{PLAIN}caf\u00e9 cr\u00e8me\n".encode()
        + b"latin1:{PLAIN}p\xe4ss\n"
        + b"spaced:{SSHA256}"
        + b"utz3MT1Pjxv8Afp3oRNFQkatdjWYtOiLp1MwopIk+Xyl6ht0\n"
    )
    return path


def login(path: Path, user: str, password: str) -> AuthResult:
    return asyncio.run(PasswdFileAuthenticator(path).verify_password(user, password))


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("caf\u00e9", "caf\u00e9 cr\u00e8me"),
        ("cafe\u0301", "cafe\u0301 cre\u0300me"),  # decomposed name and password
        ("caf\u00e9", "caf\u00e9\u00a0cr\u00e8me"),  # NO-BREAK SPACE -> SPACE
        ("spaced", "Tr0ub4dor&3"),
        # Octets that are not UTF-8 (a Latin-1 client) are no PRECIS text: compared as
        # received, as Dovecot does.
        ("latin1", "p\udce4ss"),
    ],
)
def test_login_with_prepared_name_and_password(users: Path, user: str, password: str) -> None:
    result = login(users, user, password)
    assert result.ok
    assert result.user == normalize_username(user)


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("CAF\u00c9", "caf\u00e9 cr\u00e8me"),  # case-sensitive
        ("caf\u00e9", "CAF\u00c9 CR\u00c8ME"),
        ("latin1", "p\u00e4ss"),  # UTF-8 text is not the stored Latin-1 octets
        ("caf\u00e9 ", "caf\u00e9 cr\u00e8me"),
    ],
)
def test_login_refused(users: Path, user: str, password: str) -> None:
    assert login(users, user, password) == INVALID


def test_edits_write_canonical_names_and_prepared_passwords(tmp_path: Path) -> None:
    path = tmp_path / "users"
    add_user(path, "\uff4a\uff4f\uff45", "pa\u00a0ss", scheme="PLAIN")
    add_user(path, "cafe\u0301", "cre\u0300me", scheme="PLAIN")
    assert path.read_text(encoding="utf-8") == "joe:{PLAIN}pa ss\ncaf\u00e9:{PLAIN}cr\u00e8me\n"
    set_password(path, "caf\u00e9", "new\u2003pw", scheme="PLAIN")  # EM SPACE
    assert path.read_text(encoding="utf-8") == "joe:{PLAIN}pa ss\ncaf\u00e9:{PLAIN}new pw\n"
    delete_user(path, "j\uff4fe")
    assert path.read_text(encoding="utf-8") == "caf\u00e9:{PLAIN}new pw\n"
    assert login(path, "cafe\u0301", "new pw").ok


def test_add_user_refuses_disallowed_password(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as excinfo:
        add_user(tmp_path / "users", "joe", "tab\there", scheme="PLAIN")
    assert str(excinfo.value) == "password is not allowed by RFC 8265 (DISALLOWED/controls)"
    assert not (tmp_path / "users").exists()


def test_add_user_refuses_disallowed_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidUsername) as excinfo:
        add_user(tmp_path / "users", "snow\u2603", "pw", scheme="PLAIN")
    assert str(excinfo.value) == "user name is not allowed by RFC 8265 (DISALLOWED/symbols)"
