"""Drive the sans-IO core with a fake in-memory store: bytes in, exact bytes out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from popbox.protocol.events import (
    Authenticate,
    AuthenticateApop,
    CloseConnection,
    CommitUpdate,
    NeedData,
    Reply,
    Retrieve,
)
from popbox.protocol.session import Pop3Session, SessionConfig

TIMESTAMP = "<1.2@test.example>"
GREETING = b"+OK POP3 server ready <1.2@test.example>\r\n"
PASSWORD = "secret word"


@dataclass(frozen=True, slots=True)
class Msg:
    key: str
    octets: int
    unique_id: str


def wire_size(data: bytes) -> int:
    """RFC 1939 section 11 size: CRLF line ends, a final CRLF added if missing."""
    size = len(data) + data.count(b"\n") - data.count(b"\r\n")
    return size + 2 if data and not data.endswith(b"\n") else size


@dataclass
class FakeDriver:
    """Answers the core's requests from a dict of stored messages."""

    messages: dict[str, bytes] = field(default_factory=dict)
    plaintext_allowed: bool = True
    max_bad_commands: int = 20
    block_size: int = 7
    locked: bool = False
    committed: list[tuple[str, ...]] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        self.session = Pop3Session(
            SessionConfig(
                TIMESTAMP,
                plaintext_allowed=self.plaintext_allowed,
                max_bad_commands=self.max_bad_commands,
            )
        )
        self.out = bytearray(self.session.greeting().data)

    @property
    def listing(self) -> list[Msg]:
        return [Msg(k, wire_size(v), f"uid-{k}") for k, v in self.messages.items()]

    def feed(self, data: bytes) -> bytes:
        """Feed bytes, run every event to completion, return the bytes sent for them."""
        start = len(self.out)
        self.session.receive_data(data)
        while not self.closed:
            event = self.session.next_event()
            if isinstance(event, NeedData):
                break
            self._handle(event)
        return bytes(self.out[start:])

    def feed_chunks(self, chunks: Iterable[bytes]) -> bytes:
        return b"".join(self.feed(chunk) for chunk in chunks)

    def _handle(self, event: object) -> None:
        s = self.session
        if isinstance(event, Reply):
            self.out += event.data
        elif isinstance(event, CloseConnection):
            self.closed = True
        elif isinstance(event, Authenticate):
            ok = event.password == PASSWORD and event.user == "alice"
            self._login(ok, event.user)
        elif isinstance(event, AuthenticateApop):
            self._login(event.user == "alice" and event.digest == apop_digest(), event.user)
        elif isinstance(event, Retrieve):
            self._retrieve(event)
        elif isinstance(event, CommitUpdate):
            self.committed.append(event.keys)
            for key in event.keys:
                del self.messages[key]
            self.out += s.update_done(failed=0).data
        else:  # pragma: no cover - a new event type this driver does not know
            raise AssertionError(event)

    def _login(self, ok: bool, user: str) -> None:
        s = self.session
        if not ok:
            self.out += s.auth_rejected().data
        elif self.locked:
            self.out += s.maildrop_locked().data
        else:
            self.out += s.maildrop_opened(user, self.listing).data

    def _retrieve(self, event: Retrieve) -> None:
        data = self.messages.get(event.message.key)
        if data is None:
            self.out += self.session.retrieve_failed(message_gone=True).data
            return
        self.out += event.status_line
        for i in range(0, len(data), self.block_size):
            if event.encoder.done:
                break
            self.out += event.encoder.feed(data[i : i + self.block_size])
        self.out += event.encoder.finish()
        self.session.retrieve_done()


def apop_digest() -> str:
    import hashlib  # noqa: PLC0415

    return hashlib.md5((TIMESTAMP + PASSWORD).encode()).hexdigest()


def logged_in(messages: dict[str, bytes] | None = None, **kwargs: object) -> FakeDriver:
    driver = FakeDriver(messages=dict(messages or {}), **kwargs)  # type: ignore[arg-type]
    reply = driver.feed(b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n")
    assert reply.startswith(b"+OK send PASS\r\n+OK maildrop has "), reply
    driver.out.clear()
    return driver
