"""The POP3 session state machine, without I/O (RFC 1939; shared/DESIGN.md).

The driver feeds bytes with receive_data() and asks next_event() for what to do. Commands
that need no I/O are answered here as Reply events; the rest become requests (Authenticate,
Retrieve, CommitUpdate, ...) that the driver answers through the methods below. While a
request is open, pipelined commands wait in the one input buffer, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from popbox.protocol import replies
from popbox.protocol.commands import Command, parse_command, parse_number, strip_line_end
from popbox.protocol.encoder import MessageEncoder
from popbox.protocol.errors import LocalProtocolError, RemoteProtocolError
from popbox.protocol.events import (
    Authenticate,
    AuthenticateApop,
    CloseConnection,
    CommitUpdate,
    Event,
    ListedMessage,
    NeedData,
    Reply,
    Retrieve,
)
from popbox.protocol.limits import DEFAULT_MAX_BAD_COMMANDS, MAX_COMMAND_LINE
from popbox.protocol.states import State, check_legal

_Request = Authenticate | AuthenticateApop | Retrieve | CommitUpdate


@dataclass(frozen=True, slots=True)
class SessionConfig:
    # The APOP timestamp, "<...@hostname>", unique per connection (RFC 1939 section 7).
    # Made by the driver: the core has no clock and no randomness.
    timestamp: str
    # Whether USER/PASS may be used on this connection (TLS, or the plaintext policy).
    plaintext_allowed: bool = True
    max_bad_commands: int = DEFAULT_MAX_BAD_COMMANDS

    def __post_init__(self) -> None:
        if not (self.timestamp.startswith("<") and self.timestamp.endswith(">")):
            raise ValueError("timestamp must look like <...@host>")
        if self.max_bad_commands < 1:
            raise ValueError("max_bad_commands must be at least 1")


class _Overlong:
    """Marker: the next "line" was longer than MAX_COMMAND_LINE and has been discarded."""


_OVERLONG = _Overlong()


class Pop3Session:
    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.state = State.AUTHORIZATION
        self._buffer = bytearray()
        self._skipping = False  # discarding the rest of an overlong line
        self._request: _Request | None = None
        self._closing = False
        self._bad_commands = 0
        self._user: str | None = None  # a USER that PASS may follow
        self.user: str | None = None  # the logged-in user
        self._listing: tuple[ListedMessage, ...] = ()
        self._deleted: list[bool] = []
        self._live_count = 0
        self._live_octets = 0
        self._handlers: dict[str, Callable[[Command], Event]] = {
            "USER": self._user_cmd,
            "PASS": self._pass_cmd,
            "APOP": self._apop_cmd,
            "QUIT": self._quit_cmd,
            "CAPA": self._capa_cmd,
            "STAT": self._stat_cmd,
            "LIST": self._list_cmd,
            "RETR": self._retr_cmd,
            "TOP": self._top_cmd,
            "DELE": self._dele_cmd,
            "NOOP": self._noop_cmd,
            "RSET": self._rset_cmd,
            "UIDL": self._uidl_cmd,
        }

    # -- driver interface -------------------------------------------------------------

    def greeting(self) -> Reply:
        """RFC 1939 section 4 greeting, with the APOP timestamp (section 7)."""
        return Reply(replies.ok(f"POP3 server ready {self.config.timestamp}"))

    def receive_data(self, data: bytes) -> None:
        if self.state is not State.CLOSED:
            self._buffer += data

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
        line = self._next_line()
        if line is None:
            return NeedData()
        try:
            if isinstance(line, _Overlong):
                raise RemoteProtocolError(f"line too long (limit {MAX_COMMAND_LINE} octets)")
            command = parse_command(line)
            check_legal(self.state, command.keyword)
            if command.keyword != "PASS":
                # RFC 1939 section 7: PASS only "immediately after a successful USER".
                self._user = None
            event = self._handlers[command.keyword](command)
        except RemoteProtocolError as error:
            return self._client_error(error.text)
        self._bad_commands = 0
        return event

    # -- answers to requests ----------------------------------------------------------

    def maildrop_opened(self, user: str, listing: Sequence[ListedMessage]) -> Reply:
        self._finish_request(Authenticate, AuthenticateApop)
        self.user = user
        self._listing = tuple(listing)
        self._deleted = [False] * len(self._listing)
        self._reset_totals()
        self.state = State.TRANSACTION
        return Reply(
            replies.ok(f"maildrop has {self._live_count} messages ({self._live_octets} octets)")
        )

    def auth_rejected(self) -> Reply:
        """Unknown user and wrong password get this one reply (RFC 3206 [AUTH])."""
        self._finish_request(Authenticate, AuthenticateApop)
        return Reply(replies.err("[AUTH] invalid user name or password"))

    def auth_unavailable(self) -> Reply:
        self._finish_request(Authenticate, AuthenticateApop)
        return Reply(replies.err("[SYS/TEMP] authentication is temporarily unavailable"))

    def maildrop_locked(self) -> Reply:
        """RFC 2449 section 8.1.1: [IN-USE] when the maildrop lock cannot be had."""
        self._finish_request(Authenticate, AuthenticateApop)
        return Reply(replies.err("[IN-USE] maildrop is locked by another session"))

    def maildrop_unavailable(self) -> Reply:
        self._finish_request(Authenticate, AuthenticateApop)
        return Reply(replies.err("[SYS/TEMP] maildrop is temporarily unavailable"))

    def retrieve_failed(self, *, message_gone: bool) -> Reply:
        request = self._finish_request(Retrieve)
        assert isinstance(request, Retrieve)
        if message_gone:
            return Reply(replies.err(f"message {request.message_number} no longer exists"))
        return Reply(replies.err("[SYS/TEMP] message cannot be read now"))

    def retrieve_done(self) -> None:
        self._finish_request(Retrieve)

    def update_done(self, *, failed: int) -> Reply:
        """RFC 1939 section 6: "-ERR some deleted messages not removed" if any failed."""
        self._finish_request(CommitUpdate)
        self._closing = True
        if failed:
            return Reply(replies.err("some deleted messages not removed"))
        left = self._live_count
        return Reply(replies.ok(f"POP3 server signing off ({left} messages left)"))

    # -- internals --------------------------------------------------------------------

    def _finish_request(self, *kinds: type) -> _Request:
        request = self._request
        if request is None or not isinstance(request, kinds):
            raise LocalProtocolError(f"no {' or '.join(k.__name__ for k in kinds)} is open")
        self._request = None
        return request

    def _next_line(self) -> bytes | _Overlong | None:
        """Cut the next line from the buffer, bounded by MAX_COMMAND_LINE (RFC 2449)."""
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
                if len(self._buffer) < MAX_COMMAND_LINE:
                    return None
                # Cannot end within the limit any more: refuse now, drop the rest later.
                self._buffer.clear()
                self._skipping = True
                return _OVERLONG
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            if len(line) > MAX_COMMAND_LINE:
                return _OVERLONG
            return strip_line_end(line)

    def _client_error(self, text: str) -> Reply:
        self._bad_commands += 1
        if self._bad_commands >= self.config.max_bad_commands:
            self._closing = True
            return Reply(replies.err("too many bad commands, closing connection"))
        return Reply(replies.err(text))

    def _open(self, request: _Request) -> _Request:
        self._request = request
        return request

    def _reset_totals(self) -> None:
        live = [m for m, gone in zip(self._listing, self._deleted, strict=True) if not gone]
        self._live_count = len(live)
        self._live_octets = sum(m.octets for m in live)

    def _message(self, arg: str) -> tuple[int, ListedMessage]:
        number = parse_number(arg)
        if not 1 <= number <= len(self._listing):
            raise RemoteProtocolError(f"no such message, only {len(self._listing)} in maildrop")
        if self._deleted[number - 1]:
            raise RemoteProtocolError(f"message {number} already deleted")
        return number, self._listing[number - 1]

    # -- AUTHORIZATION (RFC 1939 sections 4 and 7) -------------------------------------

    def _user_cmd(self, command: Command) -> Event:
        (name,) = _arity(command, 1)
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
        name, digest = _arity(command, 2)
        if len(digest) != 32 or digest.strip("0123456789abcdefABCDEF"):
            raise RemoteProtocolError("APOP digest must be 32 hexadecimal digits")
        return self._open(AuthenticateApop(name, self.config.timestamp, digest.lower()))

    def _quit_cmd(self, command: Command) -> Event:
        _arity(command, 0)
        if self.state is State.AUTHORIZATION:
            # RFC 1939 section 4: QUIT here ends the session without entering UPDATE.
            self._closing = True
            return Reply(replies.ok("POP3 server signing off"))
        self.state = State.UPDATE
        keys = tuple(m.key for m, gone in zip(self._listing, self._deleted, strict=True) if gone)
        return self._open(CommitUpdate(keys))

    def _capa_cmd(self, command: Command) -> Event:
        _arity(command, 0)
        tags = replies.capabilities(
            authorization=self.state is State.AUTHORIZATION,
            plaintext_allowed=self.config.plaintext_allowed,
        )
        return Reply(replies.multiline("Capability list follows", tags))

    # -- TRANSACTION (RFC 1939 section 5) ---------------------------------------------

    def _stat_cmd(self, command: Command) -> Event:
        _arity(command, 0)
        return Reply(replies.ok(f"{self._live_count} {self._live_octets}"))

    def _list_cmd(self, command: Command) -> Event:
        if _arity(command, 0, 1):
            number, message = self._message(command.args[0])
            return Reply(replies.ok(f"{number} {message.octets}"))
        lines = (
            b"%d %d" % (i, m.octets)
            for i, (m, gone) in enumerate(zip(self._listing, self._deleted, strict=True), 1)
            if not gone
        )
        head = f"{self._live_count} messages ({self._live_octets} octets)"
        return Reply(replies.multiline(head, lines))

    def _uidl_cmd(self, command: Command) -> Event:
        if _arity(command, 0, 1):
            number, message = self._message(command.args[0])
            return Reply(replies.ok(f"{number} {message.unique_id}"))
        lines = (
            b"%d %s" % (i, m.unique_id.encode("ascii"))
            for i, (m, gone) in enumerate(zip(self._listing, self._deleted, strict=True), 1)
            if not gone
        )
        return Reply(replies.multiline("unique-id listing follows", lines))

    def _retr_cmd(self, command: Command) -> Event:
        (arg,) = _arity(command, 1)
        number, message = self._message(arg)
        status = replies.ok(f"{message.octets} octets")
        return self._open(Retrieve(number, message, status, MessageEncoder()))

    def _top_cmd(self, command: Command) -> Event:
        arg, lines_arg = _arity(command, 2)
        number, message = self._message(arg)
        lines = parse_number(lines_arg)
        status = replies.ok("top of message follows")
        return self._open(Retrieve(number, message, status, MessageEncoder(top_lines=lines)))

    def _dele_cmd(self, command: Command) -> Event:
        (arg,) = _arity(command, 1)
        number, message = self._message(arg)
        # RFC 1939 section 5: only marked here; removed in the UPDATE state.
        self._deleted[number - 1] = True
        self._live_count -= 1
        self._live_octets -= message.octets
        return Reply(replies.ok(f"message {number} deleted"))

    def _noop_cmd(self, command: Command) -> Event:
        _arity(command, 0)
        return Reply(replies.ok(""))

    def _rset_cmd(self, command: Command) -> Event:
        _arity(command, 0)
        self._deleted = [False] * len(self._listing)
        self._reset_totals()
        return Reply(
            replies.ok(f"maildrop has {self._live_count} messages ({self._live_octets} octets)")
        )


def _arity(command: Command, *allowed: int) -> tuple[str, ...]:
    """Check the argument count against the command's syntax (RFC 1939 sections 4-7)."""
    if len(command.args) not in allowed:
        if len(command.args) < min(allowed):
            raise RemoteProtocolError(f"{command.keyword}: missing argument")
        raise RemoteProtocolError(f"{command.keyword}: too many arguments")
    return command.args
