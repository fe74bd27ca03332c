"""The POP3 session state machine, without I/O (RFC 1939; shared/DESIGN.md).

The driver feeds bytes with receive_data() and asks next_event() for what to do. Commands
that need no I/O are answered here as Reply events; the rest become requests (Authenticate,
Retrieve, CommitUpdate, StartTls, ...) that the driver answers through the methods of
Pop3Session. While a request is open, pipelined commands wait in the one input buffer, in
order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import ClassVar

from popbox.protocol import replies
from popbox.protocol.commands import Command, parse_command, strip_line_end
from popbox.protocol.errors import LocalProtocolError, RemoteProtocolError
from popbox.protocol.events import (
    Authenticate,
    AuthenticateApop,
    CloseConnection,
    CommitUpdate,
    Event,
    ListedMessage,
    LoginRequest,
    NeedData,
    OpenMaildrop,
    Reply,
    Request,
    Retrieve,
    SaslCheck,
    SaslFailed,
    ScramLookup,
    StartTls,
)
from popbox.protocol.limits import MAX_COMMAND_LINE, MAX_SASL_RESPONSE_LINE
from popbox.protocol.listing import Listing
from popbox.protocol.sasl_exchange import Phase, SaslExchange, decode_response
from popbox.protocol.session_config import SessionConfig
from popbox.protocol.states import State, check_legal, command_label
from popbox.protocol.transaction import TransactionCommands, arity
from popbox.sasl.base import MechanismContext, ScramCredentials
from popbox.sasl.registry import MECHANISMS, PLAINTEXT_MECHANISMS, create

_LOGIN_REQUESTS = (Authenticate, AuthenticateApop, SaslCheck, OpenMaildrop, SaslFailed)

__all__ = ["Pop3Session", "SessionConfig"]


class _Overlong:
    """Marker: the next "line" was longer than its limit and has been discarded."""


_OVERLONG = _Overlong()


class Pop3Session(TransactionCommands):
    # The handler of each command, by method name: bound methods kept in the session would
    # make every session a reference cycle, left for the garbage collector to find.
    _HANDLERS: ClassVar[dict[str, str]] = {
        "USER": "_user_cmd",
        "PASS": "_pass_cmd",
        "APOP": "_apop_cmd",
        "AUTH": "_auth_cmd",
        "STLS": "_stls_cmd",
        "UTF8": "_utf8_cmd",
        "QUIT": "_quit_cmd",
        "CAPA": "_capa_cmd",
        "STAT": "_stat_cmd",
        "LIST": "_list_cmd",
        "RETR": "_retr_cmd",
        "TOP": "_top_cmd",
        "DELE": "_dele_cmd",
        "NOOP": "_noop_cmd",
        "RSET": "_rset_cmd",
        "UIDL": "_uidl_cmd",
    }

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.state = State.AUTHORIZATION
        self.user: str | None = None  # the logged-in user
        self.utf8 = False  # RFC 6856: the client sent UTF8
        self._buffer = bytearray()
        self._skipping = False  # discarding the rest of an overlong line
        self._request: Request | None = None
        self._closing = False
        self._bad_commands = 0  # in a row (max_bad_commands)
        self.client_errors = 0  # in all: the driver treats such a client as background
        self._user: str | None = None  # a USER that PASS may follow
        self._sasl: SaslExchange | None = None
        self._failure_reason: str | None = None
        self.listing = Listing()

    # -- driver interface -------------------------------------------------------------

    def greeting(self) -> Reply:
        """RFC 1939 section 4 greeting, with the APOP timestamp (section 7)."""
        return Reply(replies.ok(f"POP3 server ready {self.config.timestamp}"))

    def receive_data(self, data: bytes) -> None:
        if self.state is not State.CLOSED:
            self._buffer += data

    @property
    def bad_commands(self) -> int:
        """Bad commands in a row, up to now (the last reply's included)."""
        return self._bad_commands

    @property
    def buffered(self) -> int:
        """Octets waiting in the input buffer (the driver pauses reading above a bound)."""
        return len(self._buffer)

    @property
    def request_open(self) -> bool:
        return self._request is not None

    def next_event(self) -> Event:
        if self._request is not None:
            raise LocalProtocolError(f"{type(self._request).__name__} is still open")
        if self._closing or self.state is State.CLOSED:
            self.state = State.CLOSED
            return CloseConnection()
        sasl = self._sasl
        limit = MAX_SASL_RESPONSE_LINE if sasl is not None else MAX_COMMAND_LINE
        line = self._next_line(limit)
        if line is None:
            return NeedData()
        if sasl is not None:
            if sasl.phase is Phase.BEARER_ERROR:
                # RFC 7628 section 3.2.3: whatever the client answers, the exchange failed;
                # the failure delay was already applied before the error challenge.
                self._sasl = None
                return Reply(replies.err("[AUTH] invalid bearer token"))
            if isinstance(line, _Overlong):
                return self._open(sasl.fail("SASL response too long"))
            return self._sasl_event(sasl.line(line))
        if self.config.on_command is not None:
            self.config.on_command(command_label(line if isinstance(line, bytes) else b""))
        try:
            if isinstance(line, _Overlong):
                raise RemoteProtocolError(f"line too long (limit {limit} octets)")
            command = parse_command(line)
            check_legal(self.state, command.keyword)
            if command.keyword != "PASS":
                # RFC 1939 section 7: PASS only "immediately after a successful USER".
                self._user = None
            handler: Callable[[Command], Event] = getattr(self, self._HANDLERS[command.keyword])
            event = handler(command)
        except RemoteProtocolError as error:
            return self._client_error(error.text)
        self._bad_commands = 0
        return event

    # -- answers to requests ----------------------------------------------------------

    def maildrop_opened(self, user: str, listing: Sequence[ListedMessage]) -> Reply:
        self._finish_request(*_LOGIN_REQUESTS)
        self._sasl = None
        self.user = user
        self.listing = Listing(listing)
        self.state = State.TRANSACTION
        n, octets = self.listing.live_count, self.listing.live_octets
        return Reply(replies.ok(f"maildrop has {n} messages ({octets} octets)"))

    def auth_rejected(self, *, bearer_status: bytes | None = None) -> Reply:
        """Unknown user and wrong password get one reply (RFC 3206 [AUTH]).

        For OAUTHBEARER/XOAUTH2, `bearer_status` is the RFC 7628 section 3.2.2 error JSON:
        it goes out as a challenge first, and the -ERR follows the client's dummy reply.
        """
        request = self._finish_request(*_LOGIN_REQUESTS)
        sasl, self._sasl = self._sasl, None
        if bearer_status is not None and sasl is not None:
            self._sasl = sasl
            return sasl.bearer_error(bearer_status)
        if isinstance(request, SaslFailed) and request.reason != replies.INVALID_CREDENTIALS:
            return Reply(replies.err(f"[AUTH] {request.reason}"))
        return Reply(replies.err(f"[AUTH] {replies.INVALID_CREDENTIALS}"))

    def auth_unavailable(self) -> Reply:
        self._finish_login()
        return Reply(replies.err("[SYS/TEMP] authentication is temporarily unavailable"))

    def shutting_down(self) -> Reply:
        """The server is stopping while the client is between commands: RFC 3206 section 4
        [SYS/TEMP], the problem is temporary; the connection then closes without UPDATE."""
        return Reply(replies.err("[SYS/TEMP] server shutting down"))

    def auth_blocked(self) -> Reply:
        """Too many failures for this user or address: refused for a while."""
        self._finish_login()
        return Reply(replies.err("[AUTH] too many failed logins, try again later"))

    def maildrop_locked(self) -> Reply:
        """RFC 2449 section 8.1.1: [IN-USE] when the maildrop lock cannot be had."""
        self._finish_login()
        return Reply(replies.err("[IN-USE] maildrop is locked by another session"))

    def maildrop_unavailable(self, *, permanent: bool = False) -> Reply:
        """RFC 3206 section 4: [SYS/TEMP] if trying later may help, [SYS/PERM] if not."""
        self._finish_login()
        if permanent:
            return Reply(replies.err("[SYS/PERM] maildrop cannot be opened for this user"))
        return Reply(replies.err("[SYS/TEMP] maildrop is temporarily unavailable"))

    def login_delayed(self) -> Reply:
        """RFC 2449 section 8.1.2: [LOGIN-DELAY] when logging in too soon again."""
        self._finish_login()
        delay = self.config.login_delay
        return Reply(replies.err(f"[LOGIN-DELAY] wait {delay} seconds between logins"))

    def scram_credentials(self, found: ScramCredentials | None) -> Event:
        self._finish_request(ScramLookup)
        assert self._sasl is not None
        return self._sasl_event(self._sasl.credentials(found))

    def tls_established(
        self,
        *,
        plaintext_allowed: bool,
        mechanisms: tuple[str, ...],
        channel_binding: tuple[str, bytes] | None = None,
    ) -> None:
        """RFC 2595 section 4: after the handshake the session starts afresh; a pending USER
        is forgotten. (Bytes sent before the handshake were discarded when STLS was
        accepted; what is buffered now arrived through TLS.)"""
        self._finish_request(StartTls)
        self._user = None
        self.config = dataclasses.replace(
            self.config,
            tls_active=True,
            plaintext_allowed=plaintext_allowed,
            mechanisms=mechanisms,
            channel_binding=channel_binding,
        )

    def user_policy(self, *, expire: str | None) -> None:
        """The logged-in user's own EXPIRE value, for CAPA in TRANSACTION (RFC 2449
        section 6.7 allows it to differ per user)."""
        self.config = dataclasses.replace(self.config, expire=expire)

    def retrieve_failed(self, *, message_gone: bool) -> Reply:
        request = self._finish_request(Retrieve)
        assert isinstance(request, Retrieve)
        if message_gone:
            return Reply(replies.err(f"message {request.message_number} no longer exists"))
        return Reply(replies.err("[SYS/TEMP] message cannot be read now"))

    def retrieve_done(self) -> None:
        self._finish_request(Retrieve)

    def update_done(self, *, failed: int, expired: int = 0) -> Reply:
        """RFC 1939 section 6: "-ERR some deleted messages not removed" if any failed.

        `expired`: messages not marked by the client that the server removed as well
        (RFC 2449 section 6.7 EXPIRE)."""
        self._finish_request(CommitUpdate)
        self._closing = True
        if failed:
            return Reply(replies.err("some deleted messages not removed"))
        left = self.listing.live_count - expired
        return Reply(replies.ok(f"POP3 server signing off ({left} messages left)"))

    # -- internals --------------------------------------------------------------------

    def _finish_request(self, *kinds: type) -> Request:
        request = self._request
        if request is None or not isinstance(request, kinds):
            raise LocalProtocolError(f"no {' or '.join(k.__name__ for k in kinds)} is open")
        self._request = None
        return request

    def _finish_login(self) -> LoginRequest:
        request = self._finish_request(*_LOGIN_REQUESTS)
        self._sasl = None
        return request  # type: ignore[return-value]

    def _next_line(self, limit: int) -> bytes | _Overlong | None:
        """Cut the next line from the buffer, bounded by `limit` (RFC 2449 section 4)."""
        while True:
            end = self._buffer.find(b"\n")
            if self._skipping:
                if end < 0:
                    self._buffer.clear()
                    return None
                del self._buffer[: end + 1]
                self._skipping = False
                continue
            if end < 0:
                if len(self._buffer) < limit:
                    return None
                # Cannot end within the limit any more: refuse now, drop the rest later.
                self._buffer.clear()
                self._skipping = True
                return _OVERLONG
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            if len(line) > limit:
                return _OVERLONG
            return strip_line_end(line)

    def _client_error(self, text: str) -> Reply:
        self._bad_commands += 1
        self.client_errors += 1
        if self._bad_commands >= self.config.max_bad_commands:
            self._closing = True
            return Reply(replies.err("too many bad commands, closing connection"))
        return Reply(replies.err(text))

    def _open(self, request: Request) -> Request:
        self._request = request
        return request

    def _sasl_event(self, event: Event) -> Event:
        """Requests from the exchange become open requests; replies pass through."""
        if isinstance(event, Reply):
            return event
        assert not isinstance(event, NeedData | CloseConnection)
        return self._open(event)

    # -- AUTHORIZATION (RFC 1939 sections 4 and 7, RFC 2595, RFC 5034, RFC 6856) -------

    def _user_cmd(self, command: Command) -> Event:
        (name,) = arity(command, 1)
        if not self.config.plaintext_allowed:
            raise RemoteProtocolError(replies.PLAINTEXT_DISALLOWED)
        self._user = name
        return Reply(replies.ok("send PASS"))

    def _pass_cmd(self, command: Command) -> Event:
        user, self._user = self._user, None
        if not self.config.plaintext_allowed:
            raise RemoteProtocolError(replies.PLAINTEXT_DISALLOWED)
        if user is None:
            raise RemoteProtocolError("give USER first")
        if not command.args or not command.args[0]:
            raise RemoteProtocolError("missing password")
        return self._open(Authenticate(user, command.args[0]))

    def _apop_cmd(self, command: Command) -> Event:
        name, digest = arity(command, 2)
        if len(digest) != 32 or digest.strip("0123456789abcdefABCDEF"):
            raise RemoteProtocolError("APOP digest must be 32 hexadecimal digits")
        return self._open(AuthenticateApop(name, self.config.timestamp, digest.lower()))

    def _auth_cmd(self, command: Command) -> Event:
        args = arity(command, 0, 1, 2)
        if not args:
            # Bare AUTH lists the mechanisms (RFC 1734 practice; Outlook relies on it).
            names = [m.encode("ascii") for m in self.config.mechanisms]
            return Reply(replies.multiline("SASL mechanisms follow", names))
        name = args[0].upper()
        if name not in self.config.mechanisms:
            if name in PLAINTEXT_MECHANISMS and name in MECHANISMS:
                raise RemoteProtocolError(replies.PLAINTEXT_DISALLOWED)
            raise RemoteProtocolError("unsupported authentication mechanism")
        # RFC 5034 section 4: "=" is an empty initial response.
        initial = (
            None
            if len(args) == 1
            else b""
            if args[1] == "="
            else decode_response(args[1].encode("ascii"))
        )
        if self.config.nonce is None:
            raise LocalProtocolError("mechanisms offered without a nonce source")
        context = MechanismContext(
            hostname=self.config.hostname,
            nonce=self.config.nonce(),
            channel_binding=self.config.channel_binding,
        )
        self._sasl = SaslExchange(name, create(name, context))
        return self._sasl_event(self._sasl.start(initial))

    def _stls_cmd(self, command: Command) -> Event:
        arity(command, 0)
        if self.config.tls_active:
            raise RemoteProtocolError("command not permitted when TLS active")
        if not self.config.stls_available:
            raise RemoteProtocolError("STLS not available on this port")
        # Whatever the client pipelined after STLS was sent in the clear and must not be
        # executed inside TLS (the STARTTLS command injection class, CVE-2011-0411).
        self._buffer.clear()
        self._skipping = False
        return self._open(StartTls(replies.ok("Begin TLS negotiation")))

    def _utf8_cmd(self, command: Command) -> Event:
        """RFC 6856 section 2: enable UTF-8 mode (valid in AUTHORIZATION only)."""
        arity(command, 0)
        self.utf8 = True
        return Reply(replies.ok("UTF8 enabled"))

    def _quit_cmd(self, command: Command) -> Event:
        arity(command, 0)
        if self.state is State.AUTHORIZATION:
            # RFC 1939 section 4: QUIT here ends the session without entering UPDATE.
            self._closing = True
            return Reply(replies.ok("POP3 server signing off"))
        self.state = State.UPDATE
        return self._open(CommitUpdate(self.listing.deleted_keys()))

    def _capa_cmd(self, command: Command) -> Event:
        arity(command, 0)
        tags = replies.capabilities(self.config, authorization=self.state is State.AUTHORIZATION)
        return Reply(replies.multiline("Capability list follows", tags))
