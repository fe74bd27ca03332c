"""Drive the sans-IO core with a fake in-memory store: bytes in, exact bytes out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from popbox.protocol.events import (
    Authenticate,
    AuthenticateApop,
    CloseConnection,
    CommitUpdate,
    Event,
    NeedData,
    OpenMaildrop,
    Reply,
    Retrieve,
    SaslCheck,
    SaslFailed,
    ScramLookup,
    StartTls,
)
from popbox.protocol.session import Pop3Session, SessionConfig
from popbox.sasl.base import CheckBearer, CheckCramMd5, CheckPassword
from popbox.sasl.scram import derive_credentials

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


def naive_wire(message: bytes, top: int | None) -> bytes:
    """A deliberately naive per-line reference of RFC 1939's multi-line encoding (section
    3 byte-stuffing, CRLF line ends; TOP of section 7): the message as sent after +OK."""
    lines: list[bytes] = []
    rest = message
    while rest:
        head, lf, rest = rest.partition(b"\n")
        lines.append(head[:-1] if lf and head.endswith(b"\r") else head)
    if top is not None and b"" in lines:
        blank = lines.index(b"")
        lines = lines[: blank + 1 + top]
    out = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    return out + b".\r\n"


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
    mechanisms: tuple[str, ...] = ()
    stls_available: bool = False
    tls_started: int = 0
    # Arrives "through TLS" right after the handshake (the client's first TLS command).
    after_handshake: bytes = b""
    nonces: list[str] = field(default_factory=lambda: [f"nonce{i}" for i in range(100)])

    def __post_init__(self) -> None:
        self.session = Pop3Session(
            SessionConfig(
                TIMESTAMP,
                hostname="test.example",
                plaintext_allowed=self.plaintext_allowed,
                max_bad_commands=self.max_bad_commands,
                mechanisms=self.mechanisms,
                stls_available=self.stls_available,
                nonce=lambda: self.nonces.pop(0),
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

    def _handle(self, event: Event) -> None:
        s = self.session
        while not isinstance(event, Reply | CloseConnection | Retrieve | CommitUpdate | NeedData):
            event = self._answer(event)
        if isinstance(event, NeedData):
            return
        if isinstance(event, Reply):
            self.out += event.data
        elif isinstance(event, CloseConnection):
            self.closed = True
        elif isinstance(event, Retrieve):
            self._retrieve(event)
        elif isinstance(event, CommitUpdate):
            self.committed.append(event.keys)
            for key in event.keys:
                del self.messages[key]
            self.out += s.update_done(failed=0).data
        else:  # pragma: no cover - a new event type this driver does not know
            raise AssertionError(event)

    def _answer(self, event: Event) -> Event:
        """Answer a request like the server would, with user alice / PASSWORD."""
        s = self.session
        if isinstance(event, Authenticate):
            return self._login(event.password == PASSWORD and event.user == "alice", event.user)
        if isinstance(event, AuthenticateApop):
            return self._login(event.user == "alice" and event.digest == apop_digest(), "alice")
        if isinstance(event, SaslCheck):
            return self._sasl_check(event)
        if isinstance(event, ScramLookup):
            found = None
            if event.user == "alice":
                found = derive_credentials(event.mechanism, PASSWORD, b"salt" * 4, 4096)
            return s.scram_credentials(found)
        if isinstance(event, OpenMaildrop):
            return self._login(True, event.user)
        if isinstance(event, SaslFailed):
            return s.auth_rejected()
        if isinstance(event, StartTls):
            self.out += event.reply
            self.tls_started += 1
            self.session.receive_data(self.after_handshake)
            s.tls_established(plaintext_allowed=True, mechanisms=self.mechanisms)
            return NeedData()
        raise AssertionError(event)  # pragma: no cover

    def _sasl_check(self, event: SaslCheck) -> Event:
        import hmac  # noqa: PLC0415

        check = event.check
        if isinstance(check, CheckPassword):
            return self._login(check.password == PASSWORD and check.authcid == "alice", "alice")
        if isinstance(check, CheckCramMd5):
            good = hmac.new(PASSWORD.encode(), check.challenge, "md5").hexdigest()
            return self._login(check.user == "alice" and check.digest == good, "alice")
        assert isinstance(check, CheckBearer)
        if check.token == "good-token" and check.user in (None, "alice"):
            return self._login(True, "alice")
        return s_rejected_bearer(self.session)

    def _login(self, ok: bool, user: str) -> Event:
        s = self.session
        if not ok:
            return s.auth_rejected()
        if self.locked:
            return s.maildrop_locked()
        return s.maildrop_opened(user, self.listing)

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


def s_rejected_bearer(session: Pop3Session) -> Event:
    return session.auth_rejected(bearer_status=b'{"status":"invalid_token"}')


def apop_digest() -> str:
    import hashlib  # noqa: PLC0415

    return hashlib.md5((TIMESTAMP + PASSWORD).encode()).hexdigest()


def logged_in(messages: dict[str, bytes] | None = None, **kwargs: object) -> FakeDriver:
    driver = FakeDriver(messages=dict(messages or {}), **kwargs)  # type: ignore[arg-type]
    reply = driver.feed(b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n")
    assert reply.startswith(b"+OK send PASS\r\n+OK maildrop has "), reply
    driver.out.clear()
    return driver
