"""OAUTHBEARER (RFC 7628) and Google's XOAUTH2: a bearer token in one client message.

Both only carry the token; the driver verifies it (CheckBearer). After a failed
verification RFC 7628 section 3.2.2 has the server send an error challenge and the client
a dummy response: that round is the core's, not the mechanism's.
"""

from __future__ import annotations

import re
from typing import ClassVar

from popbox.sasl.base import CheckBearer, Step
from popbox.sasl.common import MalformedMessage, OneMessageMechanism, decode_utf8
from popbox.sasl.gs2 import parse_gs2_header

__all__ = ["OAuthBearer", "XOAuth2"]

# RFC 7628 section 3.1: kvsep = %x01
KVSEP = "\x01"
# RFC 7628 section 3.1: key = 1*(ALPHA); value = *(VCHAR / SP / HTAB / CR / LF)
_KEY = re.compile(r"[A-Za-z]+")
_RFC7628_VALUE = re.compile(r"[\x21-\x7e \t\r\n]*")
# XOAUTH2 has no grammar beyond Google's example; its user= may be an internationalized
# address (RFC 6531), so any text but the separator and control characters.
_XOAUTH2_VALUE = re.compile(r"[^\x00-\x1f\x7f]*")
# RFC 6750 section 2.1: credentials = "Bearer" 1*SP b64token (the scheme name is
# case-insensitive, RFC 7235 section 2.1);
# b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9._~+/-]+=*)")


def parse_kvpairs(body: str, what: str, value: re.Pattern[str]) -> dict[str, str]:
    """`*kvpair kvsep` with kvpair = key "=" value kvsep; a repeated key is malformed."""
    if not body.endswith(KVSEP):
        raise MalformedMessage(f"{what} must end with 0x01 0x01")
    items = body[: -len(KVSEP)]
    pairs: dict[str, str] = {}
    if not items:
        return pairs
    if not items.endswith(KVSEP):
        raise MalformedMessage(f"{what} must end with 0x01 0x01")
    for item in items[: -len(KVSEP)].split(KVSEP):
        key, equals, text = item.partition("=")
        if not equals or not _KEY.fullmatch(key) or not value.fullmatch(text):
            raise MalformedMessage(f"malformed key=value pair in {what}")
        if key in pairs:
            raise MalformedMessage(f"repeated key in {what}")
        pairs[key] = text
    return pairs


def bearer_token(pairs: dict[str, str], what: str) -> str:
    auth = pairs.get("auth")
    if auth is None:
        raise MalformedMessage(f"{what} has no auth=Bearer token")
    match = _BEARER.fullmatch(auth)
    if match is None:
        raise MalformedMessage(f"{what} auth must be Bearer and a token")
    return match.group(1)


class OAuthBearer(OneMessageMechanism):
    name: ClassVar[str] = "OAUTHBEARER"

    def parse(self, message: bytes) -> Step:
        # RFC 7628 section 3.1: client-resp = gs2-header kvsep *kvpair kvsep
        text = decode_utf8(message, "OAUTHBEARER message")
        header, rest = parse_gs2_header(text)
        if header.cbind_flag == "p":
            # RFC 7628 section 3.1: OAUTHBEARER defines no channel binding.
            raise MalformedMessage("OAUTHBEARER does not support channel binding")
        if not rest.startswith(KVSEP):
            raise MalformedMessage("OAUTHBEARER GS2 header must be followed by 0x01")
        pairs = parse_kvpairs(rest[1:], "OAUTHBEARER message", _RFC7628_VALUE)
        return CheckBearer(header.authzid, bearer_token(pairs, "OAUTHBEARER message"))


class XOAuth2(OneMessageMechanism):
    """Google's format: `user=<user> 0x01 auth=Bearer <token> 0x01 0x01`
    (https://developers.google.com/gmail/imap/xoauth2-protocol)."""

    name: ClassVar[str] = "XOAUTH2"

    def parse(self, message: bytes) -> Step:
        text = decode_utf8(message, "XOAUTH2 message")
        pairs = parse_kvpairs(text, "XOAUTH2 message", _XOAUTH2_VALUE)
        user = pairs.get("user")
        if not user:
            raise MalformedMessage("XOAUTH2 message has no user")
        return CheckBearer(user, bearer_token(pairs, "XOAUTH2 message"))
