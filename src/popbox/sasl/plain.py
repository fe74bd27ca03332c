"""PLAIN (RFC 4616): one message, `[authzid] NUL authcid NUL passwd`, UTF-8."""

from __future__ import annotations

from typing import ClassVar

from popbox.sasl.base import CheckPassword, Step
from popbox.sasl.common import MalformedMessage, OneMessageMechanism, decode_utf8

__all__ = ["Plain"]


class Plain(OneMessageMechanism):
    name: ClassVar[str] = "PLAIN"

    def parse(self, message: bytes) -> Step:
        # RFC 4616 section 2: the three fields are UTF8 strings without NUL, so exactly two
        # NULs separate them.
        fields = decode_utf8(message, "PLAIN message").split("\x00")
        if len(fields) != 3:
            raise MalformedMessage("PLAIN message needs exactly two NUL separators")
        authzid, authcid, passwd = fields
        if not authcid:
            raise MalformedMessage("empty authentication identity")
        if not passwd:
            raise MalformedMessage("empty password")
        # Acting as another user (RFC 4616 section 2, authzid) is not supported: an authzid
        # other than the authcid itself is refused.
        if authzid and authzid != authcid:
            raise MalformedMessage("authorization identity differs from authentication identity")
        return CheckPassword(authcid, passwd)
