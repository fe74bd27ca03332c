"""User names that may (and may not) reach the passwd-file and the mail root."""

from __future__ import annotations

import pytest

from popbox.auth.usernames import MAX_USERNAME_OCTETS, InvalidUsername, validate_username

VALID = [
    "alice",
    "alice@example.com",
    "a.b",
    "a.b.c",
    "first.last+tag@example.org",
    "user-1_x",
    "Zoë",
    "用户",
    "x.",
    "a" * MAX_USERNAME_OCTETS,
    "é" * 127,  # 254 octets
]

INVALID = [
    ("", "user name is empty"),
    ("/", "user name contains a '/'"),
    ("a/b", "user name contains a '/'"),
    ("/etc", "user name contains a '/'"),
    ("..", "user name contains '..'"),
    ("a..b", "user name contains '..'"),
    ("ab..", "user name contains '..'"),
    ("../etc", "user name contains a '/'"),
    (".", "user name starts with '.'"),
    (".hidden", "user name starts with '.'"),
    ("a\x00b", "user name contains control character U+0000"),
    ("a\nb", "user name contains control character U+000A"),
    ("a\rb", "user name contains control character U+000D"),
    ("a\tb", "user name contains control character U+0009"),
    ("a\x1fb", "user name contains control character U+001F"),
    ("a\x7fb", "user name contains control character U+007F"),
    ("a\x85b", "user name contains control character U+0085"),
    ("a:b", "user name contains a ':'"),
    ("alice:", "user name contains a ':'"),
    ("a b", "user name contains whitespace"),
    (" alice", "user name contains whitespace"),
    ("alice\u00a0", "user name contains whitespace"),
    ("a\u2028b", "user name contains whitespace"),
    ("a\u3000b", "user name contains whitespace"),
    ("#alice", "user name starts with '#'"),
    ("a" * (MAX_USERNAME_OCTETS + 1), "user name is longer than 255 octets"),
    ("é" * 128, "user name is longer than 255 octets"),
    ("caf\udcc3", "user name is not valid UTF-8"),
]


@pytest.mark.parametrize("name", VALID)
def test_valid_names_are_returned_unchanged(name: str) -> None:
    assert validate_username(name) is name


@pytest.mark.parametrize(("name", "message"), INVALID)
def test_invalid_names_are_rejected_with_reason(name: str, message: str) -> None:
    with pytest.raises(InvalidUsername) as excinfo:
        validate_username(name)
    assert str(excinfo.value) == message


def test_invalid_username_is_a_value_error() -> None:
    assert issubclass(InvalidUsername, ValueError)
