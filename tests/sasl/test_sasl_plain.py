"""PLAIN (RFC 4616): exact steps for every message shape."""

from __future__ import annotations

import pytest

from popbox.protocol.errors import LocalProtocolError
from popbox.sasl.base import Challenge, CheckPassword, Failure, MechanismContext, Step
from popbox.sasl.plain import Plain

CTX = MechanismContext(hostname="mail.example.org", nonce="n0nce")


def test_initial_response_is_the_message() -> None:
    assert Plain(CTX).start(b"\x00alice\x00s3cret") == CheckPassword("alice", "s3cret")


def test_without_initial_response_an_empty_challenge_comes_first() -> None:
    plain = Plain(CTX)
    assert plain.start(None) == Challenge(b"")
    assert plain.step(b"\x00alice\x00s3cret") == CheckPassword("alice", "s3cret")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"alice\x00alice\x00pw", CheckPassword("alice", "pw")),
        (b"\x00j\xc3\xbcrgen\x00p\xc3\xa4ss word", CheckPassword("jürgen", "päss word")),
        (b"\x00alice\x00pw\xe2\x82\xac", CheckPassword("alice", "pw€")),
    ],
)
def test_accepted_messages(message: bytes, expected: Step) -> None:
    assert Plain(CTX).start(message) == expected


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "PLAIN message needs exactly two NUL separators"),
        (b"alice", "PLAIN message needs exactly two NUL separators"),
        (b"\x00alice", "PLAIN message needs exactly two NUL separators"),
        (b"\x00alice\x00pw\x00", "PLAIN message needs exactly two NUL separators"),
        (b"\x00\x00pw", "empty authentication identity"),
        (b"\x00alice\x00", "empty password"),
        (b"bob\x00alice\x00pw", "authorization identity differs from authentication identity"),
        (b"\x00al\xffice\x00pw", "PLAIN message is not valid UTF-8"),
        (b"\x00alice\x00\xc3", "PLAIN message is not valid UTF-8"),
    ],
)
def test_malformed_messages_fail(message: bytes, reason: str) -> None:
    assert Plain(CTX).start(message) == Failure(reason)
    plain = Plain(CTX)
    assert plain.start(None) == Challenge(b"")
    assert plain.step(message) == Failure(reason)


def test_failure_reason_never_holds_the_password() -> None:
    step = Plain(CTX).start(b"bob\x00alice\x00hunter2")
    assert isinstance(step, Failure)
    assert "hunter2" not in step.reason


def test_driver_misuse_raises() -> None:
    plain = Plain(CTX)
    with pytest.raises(LocalProtocolError):
        plain.step(b"\x00alice\x00pw")  # before start()
    assert plain.start(b"\x00alice\x00pw") == CheckPassword("alice", "pw")
    with pytest.raises(LocalProtocolError):
        plain.step(b"\x00alice\x00pw")  # after the result
    with pytest.raises(LocalProtocolError):
        plain.start(None)
    with pytest.raises(LocalProtocolError):
        plain.provide(None)
