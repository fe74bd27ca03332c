"""The LMTP listener (RFC 2033): how an MTA such as Postfix delivers into popbox's store.

Built on aiosmtpd's LMTP class (LHLO, MAIL, RCPT, RSET, NOOP, QUIT, VRFY, HELP), with the
DATA phase done here: aiosmtpd answers DATA with one reply, while RFC 2033 section 4.2
requires one reply per accepted recipient, in RCPT order, each for that recipient's own
delivery (also for a message over the size limit, where aiosmtpd's single 552 would leave
the client waiting for the rest).

Recipients: RCPT TO names a user if the address as given, or with its domain lowercased,
or its local part alone is a user (delivery/message.py, find_recipient); otherwise
`550 5.1.1 <rcpt>: user unknown`. Each delivery stores the message with two header lines
on top, as Postfix and Dovecot LMTP do: `Return-Path: <sender>` and `Delivered-To: rcpt`
(delivery/message.py, delivery_headers), with LF line ends (the stored form).

Replies after DATA, per recipient:
    250 2.0.0 <rcpt> delivered
    451 4.3.0 <rcpt> temporary failure          the store failed (StoreError); retry later
    550 5.1.1 <rcpt>: no maildrop for this user the store refuses the name for good
    552 5.3.4 message too big                   over max_message_size (SIZE in LHLO)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from dataclasses import dataclass

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from popbox.auth.base import Authenticator
from popbox.delivery.lmtp_data import DataDecoder
from popbox.delivery.message import delivery_headers, find_recipient, has_control_characters
from popbox.metrics import current as current_metrics
from popbox.storage.base import InvalidMaildropUser, MaildropStore, StoreError

__all__ = [
    "MAX_RECIPIENTS",
    "LmtpEnvelope",
    "LmtpHandler",
    "LmtpProtocol",
    "LmtpServer",
    "Recipient",
    "bind_unix_socket",
    "start_lmtp",
]

log = logging.getLogger(__name__)

# RFC 5321 section 4.5.3.1.8: at least 100 recipients per transaction must be taken;
# Postfix's smtpd_recipient_limit is 1000. Past it: 452 (section 4.5.3.1.10), and the
# client sends the rest in another transaction.
MAX_RECIPIENTS = 1000

# A unix socket for the MTA's user and group only (Dovecot's lmtp socket: 0660 too).
UNIX_SOCKET_MODE = 0o660

# The address for a TCP listener given only a port: LMTP has no authentication, so it is
# not offered beyond this machine unless an address is configured.
DEFAULT_ADDRESS = "127.0.0.1"

_GREETING_IDENT = "LMTP popbox"


@dataclass(frozen=True, slots=True)
class Recipient:
    """An accepted RCPT: the address as the client gave it and the user it names."""

    address: str
    user: str  # canonical (RFC 8265): the maildrop owner


class LmtpEnvelope(Envelope):
    """aiosmtpd's envelope plus the user each accepted recipient names."""

    def __init__(self) -> None:
        super().__init__()
        self.recipients: list[Recipient] = []


def _shown(address: str) -> str:
    """The address for a reply line: octets that were not UTF-8 become "?"."""
    return address.encode("utf-8", "replace").decode("utf-8")


def _sender(envelope: Envelope) -> str:
    # aiosmtpd keeps the null reverse-path (bounces, RFC 5321 section 4.5.5) as "<>".
    mail_from = envelope.mail_from or ""
    return "" if mail_from == "<>" else mail_from


class LmtpHandler:
    """aiosmtpd hooks (MAIL, RCPT, LHLO) and the per-recipient delivery."""

    def __init__(self, store: MaildropStore, authenticator: Authenticator) -> None:
        self.store = store
        self.authenticator = authenticator

    async def handle_EHLO(  # noqa: N802 (aiosmtpd's hook name)
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """The LHLO reply: aiosmtpd's, plus the extensions RFC 2033 section 5 requires."""
        session.host_name = hostname  # aiosmtpd leaves this to a handler with this hook
        *extensions, last = responses
        return [*extensions, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", last]

    async def handle_MAIL(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if has_control_characters(address):
            return "553 5.1.7 bad sender address syntax"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not isinstance(envelope, LmtpEnvelope):
            raise TypeError("LmtpHandler needs LmtpProtocol's envelopes")
        shown = _shown(address)
        if has_control_characters(address):
            return "501 5.1.3 bad recipient address syntax"
        if len(envelope.recipients) >= MAX_RECIPIENTS:
            return "452 4.5.3 too many recipients"
        try:
            user = await find_recipient(self.authenticator, address)
        except OSError as exc:
            log.error("LMTP: cannot look up recipient %s: %s", shown, exc)
            return f"451 4.3.0 <{shown}> temporary failure"
        if user is None:
            return f"550 5.1.1 <{shown}>: user unknown"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        envelope.recipients.append(Recipient(address, user))
        return f"250 2.1.5 <{shown}> OK"

    async def handle_exception(self, error: Exception) -> str:
        """Our bug in a command other than DATA: logged, never described to the client."""
        log.error("LMTP: internal error", exc_info=error)
        return "451 4.3.0 internal error"

    async def deliver(self, sender: str, recipient: Recipient, message: bytes) -> str:
        """Store `message` (stored form) for one recipient; return that recipient's reply."""
        shown = _shown(recipient.address)
        stored = delivery_headers(sender, recipient.address) + message
        try:
            await self.store.deliver(recipient.user, stored)
        except InvalidMaildropUser as exc:
            log.error("LMTP: %s: %s", shown, exc)
            return f"550 5.1.1 <{shown}>: no maildrop for this user"
        except StoreError as exc:
            current_metrics().store_error("deliver")
            log.warning("LMTP: delivery to %s failed: %s", shown, exc)
            return f"451 4.3.0 <{shown}> temporary failure"
        except Exception:
            # Our bug: this recipient still gets its reply, so the others keep theirs.
            log.exception("LMTP: delivery to %s failed", shown)
            return f"451 4.3.0 <{shown}> temporary failure"
        log.info("LMTP: delivered %d octets to %s", len(stored), recipient.user)
        return f"250 2.0.0 <{shown}> delivered"


class LmtpProtocol(LMTP):
    """aiosmtpd's LMTP with RFC 2033's DATA: one reply per accepted recipient."""

    def __init__(
        self,
        handler: LmtpHandler,
        *,
        max_message_size: int,
        hostname: str,
        connections: set[LmtpProtocol],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(
            handler,
            data_size_limit=max_message_size,
            enable_SMTPUTF8=True,  # RFC 6531: UTF-8 addresses, as POP3 UTF8 user names
            hostname=hostname,
            ident=_GREETING_IDENT,
            loop=loop,
        )
        self.lmtp_handler = handler
        self._connections = connections
        self._max_message_size = max_message_size

    def _create_envelope(self) -> LmtpEnvelope:
        return LmtpEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._connections.discard(self)
        super().connection_lost(error)

    def abort(self) -> None:
        """Close the connection now (server shutdown)."""
        if self.transport is not None:
            self.transport.close()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:  # noqa: N802 (aiosmtpd dispatch name)
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        if not isinstance(envelope, LmtpEnvelope):
            raise TypeError("LmtpProtocol's envelopes are LmtpEnvelopes")
        if not envelope.recipients:
            # RFC 2033 section 4.2: DATA with no accepted recipient fails as a whole.
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        decoder = DataDecoder(self._max_message_size or None)
        await self._read_text(decoder)
        self.envelope = self._create_envelope()  # the transaction ends (RFC 5321 4.1.1.4)
        if decoder.too_big:
            for _ in envelope.recipients:
                await self.push("552 5.3.4 message too big")
            return
        sender, message = _sender(envelope), decoder.message
        for recipient in envelope.recipients:
            await self.push(await self.lmtp_handler.deliver(sender, recipient, message))

    async def _read_text(self, decoder: DataDecoder) -> None:
        """Feed the decoder line by line, so that nothing after the final "." is read:
        that belongs to the next (pipelined) command."""
        reader = self._reader
        while not decoder.done:
            try:
                chunk = await reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                # A line longer than the reader's buffer limit: take what is there.
                chunk = await reader.read(exc.consumed)
            except asyncio.IncompleteReadError as exc:
                raise ConnectionResetError("connection closed during DATA") from exc
            decoder.feed(chunk)


@dataclass(eq=False)
class LmtpServer:
    """A running LMTP listener: TCP (`address` is the bound host and port) or a unix
    socket (`path`)."""

    server: asyncio.AbstractServer
    address: tuple[str, int] | None
    path: str | None  # unlinked by close(); None for a socket someone else bound
    connections: set[LmtpProtocol]
    handler: LmtpHandler

    async def close(self) -> None:
        """Stop listening and close every connection. A client cut off before its replies
        retries later; a delivery already stored stays (a duplicate at worst, no loss)."""
        self.server.close()
        for protocol in list(self.connections):
            protocol.abort()
        await self.server.wait_closed()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def bind_unix_socket(path: str) -> socket.socket:
    """A unix stream socket bound at `path` with UNIX_SOCKET_MODE before it listens, so no
    client connects while the mode is still the umask's."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # left by a previous run (asyncio's create_unix_server does this)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, UNIX_SOCKET_MODE)
    except BaseException:
        sock.close()
        raise
    return sock


async def start_lmtp(
    *,
    store: MaildropStore,
    authenticator: Authenticator,
    address: str | None,
    port: int | None,
    path: str | None,
    max_message_size: int,
    hostname: str,
    sock: socket.socket | None = None,
) -> LmtpServer:
    """Listen for LMTP on the running event loop: on a unix socket at `path` (mode 0660),
    or on TCP `address` (default 127.0.0.1) and `port` (0: any free port), or on `sock`,
    already bound (worker processes share one; its binder unlinks a unix socket's path).

    `max_message_size` is announced as SIZE and enforced (0: no limit); `hostname` is
    the greeting's. Raises OSError if the socket cannot be bound.
    """
    if sock is None and (path is None) == (port is None):
        raise ValueError("give either port (with address) or path")
    loop = asyncio.get_running_loop()
    handler = LmtpHandler(store, authenticator)
    connections: set[LmtpProtocol] = set()

    def protocol() -> LmtpProtocol:
        return LmtpProtocol(
            handler,
            max_message_size=max_message_size,
            hostname=hostname,
            connections=connections,
            loop=loop,
        )

    if sock is not None and sock.family == socket.AF_UNIX:
        server = await loop.create_unix_server(protocol, sock=sock)
        return LmtpServer(server, None, None, connections, handler)
    if path is not None:
        server = await loop.create_unix_server(protocol, sock=bind_unix_socket(path))
        return LmtpServer(server, None, path, connections, handler)
    if sock is not None:
        server = await loop.create_server(protocol, sock=sock)
    else:
        server = await loop.create_server(protocol, host=address or DEFAULT_ADDRESS, port=port)
    host, bound_port = server.sockets[0].getsockname()[:2]
    return LmtpServer(server, (host, bound_port), None, connections, handler)
