"""LOGIN (draft-murchison-sasl-login): username and password, one challenge each.

The challenges are the customary "Username:" and "Password:"; clients ignore their text. An
initial response is the username (draft-murchison-sasl-login-00 section 2.1).
"""

from __future__ import annotations

import enum
from typing import ClassVar

from popbox.sasl.base import Challenge, CheckPassword, Failure, MechanismContext, Step
from popbox.sasl.common import MalformedMessage, SaslMechanism, decode_utf8

__all__ = ["Login"]

USERNAME_CHALLENGE = b"Username:"
PASSWORD_CHALLENGE = b"Password:"


class _Phase(enum.Enum):
    NEW = "new"
    USERNAME = "username"
    PASSWORD = "password"
    DONE = "done"


def _field(data: bytes, what: str) -> str:
    text = decode_utf8(data, what)
    if not text:
        raise MalformedMessage(f"empty {what}")
    if "\x00" in text:
        raise MalformedMessage(f"NUL in {what}")
    return text


class Login(SaslMechanism):
    name: ClassVar[str] = "LOGIN"

    def __init__(self, ctx: MechanismContext) -> None:
        super().__init__(ctx)
        self._phase = _Phase.NEW
        self._username = ""

    def start(self, initial: bytes | None) -> Step:
        if self._phase is not _Phase.NEW:
            raise self._misuse("start()", self._phase)
        if initial is None:
            self._phase = _Phase.USERNAME
            return Challenge(USERNAME_CHALLENGE)
        return self._take_username(initial)

    def step(self, response: bytes) -> Step:
        if self._phase is _Phase.USERNAME:
            return self._take_username(response)
        if self._phase is _Phase.PASSWORD:
            self._phase = _Phase.DONE
            try:
                password = _field(response, "password")
            except MalformedMessage as malformed:
                return Failure(malformed.reason)
            return CheckPassword(self._username, password)
        raise self._misuse("step()", self._phase)

    def _take_username(self, data: bytes) -> Step:
        try:
            self._username = _field(data, "username")
        except MalformedMessage as malformed:
            self._phase = _Phase.DONE
            return Failure(malformed.reason)
        self._phase = _Phase.PASSWORD
        return Challenge(PASSWORD_CHALLENGE)
