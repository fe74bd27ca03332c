"""LOGIN (draft-murchison-sasl-login): Username:/Password: challenges, exact steps."""

from __future__ import annotations

import pytest

from popbox.protocol.errors import LocalProtocolError
from popbox.sasl.base import Challenge, CheckPassword, Failure, MechanismContext
from popbox.sasl.login import Login

CTX = MechanismContext(hostname="mail.example.org", nonce="n0nce")


def test_two_challenges_without_initial_response() -> None:
    login = Login(CTX)
    assert login.start(None) == Challenge(b"Username:")
    assert login.step(b"alice") == Challenge(b"Password:")
    assert login.step(b"s3cret") == CheckPassword("alice", "s3cret")


def test_initial_response_is_the_username() -> None:
    login = Login(CTX)
    assert login.start(b"j\xc3\xbcrgen") == Challenge(b"Password:")
    assert login.step(b"p\xc3\xa4ss word") == CheckPassword("jürgen", "päss word")


@pytest.mark.parametrize(
    ("username", "reason"),
    [
        (b"", "empty username"),
        (b"al\x00ice", "NUL in username"),
        (b"al\xffice", "username is not valid UTF-8"),
    ],
)
def test_malformed_username_fails(username: bytes, reason: str) -> None:
    assert Login(CTX).start(username) == Failure(reason)
    login = Login(CTX)
    assert login.start(None) == Challenge(b"Username:")
    assert login.step(username) == Failure(reason)
    with pytest.raises(LocalProtocolError):
        login.step(b"s3cret")


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        (b"", "empty password"),
        (b"pw\x00", "NUL in password"),
        (b"\xc3", "password is not valid UTF-8"),
    ],
)
def test_malformed_password_fails(password: bytes, reason: str) -> None:
    login = Login(CTX)
    assert login.start(b"alice") == Challenge(b"Password:")
    assert login.step(password) == Failure(reason)


def test_driver_misuse_raises() -> None:
    login = Login(CTX)
    with pytest.raises(LocalProtocolError):
        login.step(b"alice")
    assert login.start(None) == Challenge(b"Username:")
    with pytest.raises(LocalProtocolError):
        login.start(None)
    with pytest.raises(LocalProtocolError):
        login.provide(None)
    assert login.step(b"alice") == Challenge(b"Password:")
    assert login.step(b"pw") == CheckPassword("alice", "pw")
    with pytest.raises(LocalProtocolError):
        login.step(b"more")
