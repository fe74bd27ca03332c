"""CRAM-MD5 (RFC 2195): the challenge from the context, `user SP digest` responses."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from popbox.protocol.errors import LocalProtocolError
from popbox.sasl.base import Challenge, CheckCramMd5, Failure, MechanismContext
from popbox.sasl.crammd5 import CramMd5

CTX = MechanismContext(hostname="mail.example.org", nonce="1896.697170952")
CHALLENGE = b"<1896.697170952@mail.example.org>"


def test_rfc2195_example() -> None:
    # RFC 2195 section 2: user "tim", secret "tanstaaftanstaaf", and this digest for the
    # challenge <1896.697170952@postoffice.reston.mci.net>.
    ctx = MechanismContext(hostname="postoffice.reston.mci.net", nonce="1896.697170952")
    cram = CramMd5(ctx)
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    assert cram.start(None) == Challenge(challenge)
    digest = "b913a602c7eda7a495b4e6e7334d3890"
    assert hmac.new(b"tanstaaftanstaaf", challenge, hashlib.md5).hexdigest() == digest
    assert cram.step(b"tim " + digest.encode()) == CheckCramMd5("tim", challenge, digest)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            b"alice " + b"0123456789abcdef" * 2,
            CheckCramMd5("alice", CHALLENGE, "0123456789abcdef" * 2),
        ),
        (
            b"alice " + b"0123456789ABCDEF" * 2,
            CheckCramMd5("alice", CHALLENGE, "0123456789abcdef" * 2),
        ),
        (b"john doe " + b"a" * 32, CheckCramMd5("john doe", CHALLENGE, "a" * 32)),
        (b"j\xc3\xbcrgen " + b"0" * 32, CheckCramMd5("jürgen", CHALLENGE, "0" * 32)),
    ],
)
def test_responses(response: bytes, expected: CheckCramMd5) -> None:
    cram = CramMd5(CTX)
    assert cram.start(None) == Challenge(CHALLENGE)
    assert cram.step(response) == expected


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (b"", "CRAM-MD5 response must be user SP digest"),
        (b"a" * 32, "CRAM-MD5 response must be user SP digest"),
        (b" " + b"a" * 32, "CRAM-MD5 response must be user SP digest"),
        (b"alice " + b"a" * 31, "CRAM-MD5 digest must be 32 hexadecimal digits"),
        (b"alice " + b"a" * 33, "CRAM-MD5 digest must be 32 hexadecimal digits"),
        (b"alice " + b"g" * 32, "CRAM-MD5 digest must be 32 hexadecimal digits"),
        (b"alice " + b"a" * 32 + b" ", "CRAM-MD5 digest must be 32 hexadecimal digits"),
        (b"alice " + b"a" * 31 + b"\n", "CRAM-MD5 digest must be 32 hexadecimal digits"),
        (b"alice " + "\uff10".encode() * 32, "CRAM-MD5 digest must be 32 hexadecimal digits"),
        (b"al\x00ice " + b"a" * 32, "NUL in CRAM-MD5 user name"),
        (b"al\xffice " + b"a" * 32, "CRAM-MD5 response is not valid UTF-8"),
    ],
)
def test_malformed_responses_fail(response: bytes, reason: str) -> None:
    cram = CramMd5(CTX)
    assert cram.start(None) == Challenge(CHALLENGE)
    assert cram.step(response) == Failure(reason)


@pytest.mark.parametrize("initial", [b"", b"alice " + b"a" * 32])
def test_initial_response_fails(initial: bytes) -> None:
    cram = CramMd5(CTX)
    assert cram.start(initial) == Failure("CRAM-MD5 takes no initial response")
    with pytest.raises(LocalProtocolError):
        cram.step(b"alice " + b"a" * 32)


def test_driver_misuse_raises() -> None:
    cram = CramMd5(CTX)
    with pytest.raises(LocalProtocolError):
        cram.step(b"alice " + b"a" * 32)
    assert cram.start(None) == Challenge(CHALLENGE)
    with pytest.raises(LocalProtocolError):
        cram.start(None)
    with pytest.raises(LocalProtocolError):
        cram.provide(None)
    assert cram.step(b"alice " + b"a" * 32) == CheckCramMd5("alice", CHALLENGE, "a" * 32)
    with pytest.raises(LocalProtocolError):
        cram.step(b"alice " + b"a" * 32)
