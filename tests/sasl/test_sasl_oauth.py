"""OAUTHBEARER (RFC 7628) and XOAUTH2: exact steps for every message shape."""

from __future__ import annotations

import pytest

from popbox.protocol.errors import LocalProtocolError
from popbox.sasl.base import Challenge, CheckBearer, Failure, MechanismContext
from popbox.sasl.oauth import OAuthBearer, XOAuth2

CTX = MechanismContext(hostname="mail.example.org", nonce="n0nce")
TOKEN = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="

# RFC 7628 section 4.1, the example client response (the token is the RFC's).
RFC7628_MESSAGE = (
    b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
    b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
)


def test_rfc7628_example_as_initial_response() -> None:
    assert OAuthBearer(CTX).start(RFC7628_MESSAGE) == CheckBearer("user@example.com", TOKEN)


def test_without_initial_response_an_empty_challenge_comes_first() -> None:
    bearer = OAuthBearer(CTX)
    assert bearer.start(None) == Challenge(b"")
    assert bearer.step(RFC7628_MESSAGE) == CheckBearer("user@example.com", TOKEN)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"n,,\x01auth=Bearer abc\x01\x01", CheckBearer(None, "abc")),
        (b"y,,\x01auth=Bearer abc\x01\x01", CheckBearer(None, "abc")),
        (b"n,,\x01auth=bearer  a-b.c_d~e+f/g==\x01\x01", CheckBearer(None, "a-b.c_d~e+f/g==")),
        (b"n,a=a=2Cb=3Dc,\x01auth=Bearer t\x01\x01", CheckBearer("a,b=c", "t")),
        (b"n,a=j\xc3\xbcrgen,\x01auth=Bearer t\x01\x01", CheckBearer("jürgen", "t")),
        (b"n,,\x01custom=x y\x01auth=Bearer t\x01\x01", CheckBearer(None, "t")),
    ],
)
def test_oauthbearer_accepted(message: bytes, expected: CheckBearer) -> None:
    assert OAuthBearer(CTX).start(message) == expected


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "malformed GS2 header"),
        (b"\x01", "malformed GS2 header"),
        (b"n,,", "OAUTHBEARER GS2 header must be followed by 0x01"),
        (b"n,,auth=Bearer t\x01\x01", "OAUTHBEARER GS2 header must be followed by 0x01"),
        (b"n,,\x01\x01", "OAUTHBEARER message has no auth=Bearer token"),
        (b"n,,\x01host=h\x01\x01", "OAUTHBEARER message has no auth=Bearer token"),
        (b"n,,\x01auth=Bearer t\x01", "OAUTHBEARER message must end with 0x01 0x01"),
        (b"n,,\x01auth=Bearer t", "OAUTHBEARER message must end with 0x01 0x01"),
        (b"n,,\x01auth=Bearer t\x01\x01\x01", "malformed key=value pair in OAUTHBEARER message"),
        (b"n,,\x01auth\x01\x01", "malformed key=value pair in OAUTHBEARER message"),
        (b"n,,\x01au1h=x\x01\x01", "malformed key=value pair in OAUTHBEARER message"),
        (b"n,,\x01auth=Bearer t\x00\x01\x01", "malformed key=value pair in OAUTHBEARER message"),
        (b"n,,\x01host=\xc3\xa9\x01\x01", "malformed key=value pair in OAUTHBEARER message"),
        (b"n,,\x01auth=Bearer a\x01auth=Bearer b\x01\x01", "repeated key in OAUTHBEARER message"),
        (
            b"n,,\x01auth=Basic dXNlcjpwdw==\x01\x01",
            "OAUTHBEARER message auth must be Bearer and a token",
        ),
        (b"n,,\x01auth=Bearer\x01\x01", "OAUTHBEARER message auth must be Bearer and a token"),
        (b"n,,\x01auth=Bearer a b\x01\x01", "OAUTHBEARER message auth must be Bearer and a token"),
        (b"n,,\x01auth=Bearer =\x01\x01", "OAUTHBEARER message auth must be Bearer and a token"),
        (
            b"p=tls-exporter,,\x01auth=Bearer t\x01\x01",
            "OAUTHBEARER does not support channel binding",
        ),
        (b"x,,\x01auth=Bearer t\x01\x01", "malformed GS2 channel binding flag"),
        (b"F,n,,\x01auth=Bearer t\x01\x01", "malformed GS2 channel binding flag"),
        (b"n,u=x,\x01auth=Bearer t\x01\x01", "malformed GS2 authzid"),
        (b"n,a=,\x01auth=Bearer t\x01\x01", "malformed authzid"),
        (b"n,a=x=41,\x01auth=Bearer t\x01\x01", "malformed authzid"),
        (b"n,,\xff\x01auth=Bearer t\x01\x01", "OAUTHBEARER message is not valid UTF-8"),
    ],
)
def test_oauthbearer_malformed_fails(message: bytes, reason: str) -> None:
    assert OAuthBearer(CTX).start(message) == Failure(reason)
    bearer = OAuthBearer(CTX)
    assert bearer.start(None) == Challenge(b"")
    assert bearer.step(message) == Failure(reason)


# Google's documented example (developers.google.com/gmail/imap/xoauth2-protocol).
XOAUTH2_MESSAGE = (
    b"user=someuser@example.com\x01"
    b"auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
)


def test_xoauth2_example() -> None:
    expected = CheckBearer("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")
    assert XOAuth2(CTX).start(XOAUTH2_MESSAGE) == expected
    xoauth2 = XOAuth2(CTX)
    assert xoauth2.start(None) == Challenge(b"")
    assert xoauth2.step(XOAUTH2_MESSAGE) == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"auth=Bearer t\x01user=u\x01\x01", CheckBearer("u", "t")),
        (
            b"user=j\xc3\xbcrgen@b\xc3\xbccher.example\x01auth=Bearer t\x01\x01",
            CheckBearer("jürgen@bücher.example", "t"),
        ),
    ],
)
def test_xoauth2_accepted(message: bytes, expected: CheckBearer) -> None:
    assert XOAuth2(CTX).start(message) == expected


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "XOAUTH2 message must end with 0x01 0x01"),
        (b"\x01", "XOAUTH2 message has no user"),
        (b"user=u\x01auth=Bearer t\x01", "XOAUTH2 message must end with 0x01 0x01"),
        (b"user=u\x01auth=Bearer t", "XOAUTH2 message must end with 0x01 0x01"),
        (b"auth=Bearer t\x01\x01", "XOAUTH2 message has no user"),
        (b"user=\x01auth=Bearer t\x01\x01", "XOAUTH2 message has no user"),
        (b"user=u\x01\x01", "XOAUTH2 message has no auth=Bearer token"),
        (b"user=u\x01auth=Basic x\x01\x01", "XOAUTH2 message auth must be Bearer and a token"),
        (b"user=u\x01user=v\x01auth=Bearer t\x01\x01", "repeated key in XOAUTH2 message"),
        (b"user=u\nv\x01auth=Bearer t\x01\x01", "malformed key=value pair in XOAUTH2 message"),
        (b"user\x01auth=Bearer t\x01\x01", "malformed key=value pair in XOAUTH2 message"),
        (b"user=u\x01\x01auth=Bearer t\x01\x01", "malformed key=value pair in XOAUTH2 message"),
        (b"user=\xff\x01auth=Bearer t\x01\x01", "XOAUTH2 message is not valid UTF-8"),
    ],
)
def test_xoauth2_malformed_fails(message: bytes, reason: str) -> None:
    assert XOAuth2(CTX).start(message) == Failure(reason)


@pytest.mark.parametrize("mechanism", [OAuthBearer, XOAuth2])
def test_driver_misuse_raises(mechanism: type[OAuthBearer] | type[XOAuth2]) -> None:
    instance = mechanism(CTX)
    with pytest.raises(LocalProtocolError):
        instance.step(b"")
    assert instance.start(None) == Challenge(b"")
    with pytest.raises(LocalProtocolError):
        instance.provide(None)
    assert isinstance(instance.step(b""), Failure)
    with pytest.raises(LocalProtocolError):
        instance.step(b"")
