"""CRAM-MD5 (RFC 2195): the server's msg-id challenge, the client's `user SP digest`."""

from __future__ import annotations

import enum
import re
from typing import ClassVar

from popbox.sasl.base import Challenge, CheckCramMd5, Failure, MechanismContext, Step
from popbox.sasl.common import MalformedMessage, SaslMechanism, decode_utf8

__all__ = ["CramMd5"]

# RFC 2195 section 2: the digest is 16 octets as 32 hexadecimal digits (sent lowercase;
# uppercase is accepted and lowercased, as the driver compares lowercase hex).
_DIGEST = re.compile(r"[0-9A-Fa-f]{32}")


class _Phase(enum.Enum):
    NEW = "new"
    RESPONSE = "response"
    DONE = "done"


def parse_response(response: bytes) -> tuple[str, str]:
    """`user SP digest` -> (user, lowercase digest); the user is everything before the
    last space, so a user name with spaces survives."""
    text = decode_utf8(response, "CRAM-MD5 response")
    user, space, digest = text.rpartition(" ")
    if not space or not user:
        raise MalformedMessage("CRAM-MD5 response must be user SP digest")
    if not _DIGEST.fullmatch(digest):
        raise MalformedMessage("CRAM-MD5 digest must be 32 hexadecimal digits")
    if "\x00" in user:
        raise MalformedMessage("NUL in CRAM-MD5 user name")
    return user, digest.lower()


class CramMd5(SaslMechanism):
    name: ClassVar[str] = "CRAM-MD5"

    def __init__(self, ctx: MechanismContext) -> None:
        super().__init__(ctx)
        self._phase = _Phase.NEW
        # RFC 2195 section 2: a msg-id-like string, unique per exchange; the nonce is
        # fresh and random per AUTH (MechanismContext).
        self.challenge = f"<{ctx.nonce}@{ctx.hostname}>".encode()

    def start(self, initial: bytes | None) -> Step:
        if self._phase is not _Phase.NEW:
            raise self._misuse("start()", self._phase)
        if initial is not None:
            # The server speaks first in CRAM-MD5: an initial response cannot answer a
            # challenge the client has not seen.
            self._phase = _Phase.DONE
            return Failure("CRAM-MD5 takes no initial response")
        self._phase = _Phase.RESPONSE
        return Challenge(self.challenge)

    def step(self, response: bytes) -> Step:
        if self._phase is not _Phase.RESPONSE:
            raise self._misuse("step()", self._phase)
        self._phase = _Phase.DONE
        try:
            user, digest = parse_response(response)
        except MalformedMessage as malformed:
            return Failure(malformed.reason)
        return CheckCramMd5(user, self.challenge, digest)
