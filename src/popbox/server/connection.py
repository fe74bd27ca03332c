"""One POP3 connection: the asyncio edge that drives the sans-IO core.

The transport's bytes go straight into the core's one input buffer; a driver task asks the
core for events and performs the I/O they request. Writes respect the transport's flow
control (pause_writing/resume_writing: server/flow.py), so a client that does not read
its RETR output holds at most one block in our memory (the streaming itself:
server/retrieval.py), and not for longer than the autologout timer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from popbox import pacing
from popbox.logsetup import bind_session, new_session_id
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
from popbox.protocol.limits import MAX_COMMAND_LINE
from popbox.protocol.session import Pop3Session
from popbox.server.accounting import SessionAccounting
from popbox.server.context import (
    MAX_PENDING_INPUT,
    TLS_HANDSHAKE_TIMEOUT,
    ProxiedClient,
    ServerContext,
)
from popbox.server.flow import OutputStalled, WriteFlow
from popbox.server.login import LoginHandler, printable
from popbox.server.retrieval import send_message
from popbox.server.tarpit import tarpit, tarpitted
from popbox.server.tls import channel_binding, tls_details
from popbox.server.update import commit_update
from popbox.storage.base import Maildrop

log = logging.getLogger("popbox.session")


class Pop3Connection(asyncio.Protocol):
    def __init__(
        self,
        ctx: ServerContext,
        tls_mode: str = "none",
        proxied: ProxiedClient | None = None,
        *,
        peer: str | None = None,
    ) -> None:
        self._ctx = ctx
        self._tls_mode = tls_mode  # "none" | "starttls" | "implicit"
        self._proxied = proxied  # the client a PROXY protocol header named
        self._tls = False  # our own TLS, or the proxy's (PP2_CLIENT_SSL)
        self._transport: asyncio.Transport | None = None
        self._session: Pop3Session | None = None
        self._early = b""  # what arrived before the session existed
        self._data_arrived = asyncio.Event()
        self._lost = False
        self._interrupt = asyncio.Event()  # ends a tarpit's wait: the client is done
        self._eof = False  # the client half-closed: answer what it sent, then close
        self._flow = WriteFlow()
        self._maildrop: Maildrop | None = None
        self._retrieved: set[str] = set()  # keys RETR'd in this session (EXPIRE)
        self._expire_days: int | None = None  # this user's EXPIRE, set at login
        # The address accept(2) gave: getpeername(2) fails once the client reset.
        self.peer = peer or "?"
        self.session_id = new_session_id()
        self.acct = SessionAccounting(ctx.metrics)  # the logout line's counts, and metrics

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        # Implicit TLS (RFC 8314): asyncio ran the handshake before calling us.
        self._tls = transport.get_extra_info("ssl_object") is not None
        if self.peer == "?":
            peername = transport.get_extra_info("peername")
            self.peer = str(peername[0]) if peername else "?"
        if self._proxied is not None:
            # Logs, limits, throttling and the plaintext policy see the real client.
            self.peer = self._proxied.address
            self._tls = self._tls or self._proxied.tls
        # TCP_NODELAY comes with the socket: the listener has it (server/listeners.py).
        ctx = self._ctx
        ctx.metrics.connections.inc()
        if not self._admit(self._transport):
            return
        ctx.per_ip[self.peer] += 1
        self.acct.opened()
        task = asyncio.get_running_loop().create_task(self._run())
        ctx.tasks.add(task)
        task.add_done_callback(ctx.tasks.discard)

    def data_received(self, data: bytes) -> None:
        session = self._session
        if session is None or self._transport is None:  # before _run made the session
            self._early += data
            return
        session.receive_data(data)
        self.acct.received(len(data))
        # Only a whole line (or one past the command limit) can be a command: a line
        # trickled in a byte at a time wakes the session once, not once a byte.
        if b"\n" in data or session.buffered >= MAX_COMMAND_LINE:
            self._data_arrived.set()
        if session.buffered > MAX_PENDING_INPUT:
            self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        # `printf 'USER a\r\nPASS b\r\nQUIT\r\n' | nc` half-closes after its last command:
        # keep the transport open so the pending commands still get their replies (TLS
        # cannot half-close: there the transport closes itself).
        self._eof = True
        self._data_arrived.set()
        self._interrupt.set()  # nothing more will come: garbage it sent gets no more replies
        return self._transport is None or self._transport.get_extra_info("ssl_object") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._data_arrived.set()
        self._interrupt.set()
        self._flow.lost()

    def pause_writing(self) -> None:
        self._flow.pause()

    def resume_writing(self) -> None:
        self._flow.resume()

    # -- helpers ------------------------------------------------------------------------

    def _admit(self, transport: asyncio.Transport) -> bool:
        """Connection limits and blocked addresses: refuse (RFC 3206 [SYS/TEMP]), close."""
        ctx = self._ctx
        refused = ctx.refusal(self.peer)
        if refused is None:
            return True
        label, reason = refused
        ctx.metrics.refused(label)
        log.warning("refused client=%s reason=%r", self.peer, reason, extra={"client": self.peer})
        refusal = b"-ERR [SYS/TEMP] " + reason.encode("ascii") + b"\r\n"
        transport.write(refusal)
        ctx.metrics.sent_bytes.inc(len(refusal))
        transport.close()
        return False

    async def _drain(self) -> None:
        """Wait for the client to read (server/flow.py): autologout after idle_timeout."""
        await self._flow.drain(self._ctx.policy.idle_timeout)

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        if data and not self._lost:
            self._transport.write(data)
            self.acct.sent(len(data))

    def _flush(self, out: list[bytes]) -> None:
        if out:
            self._write(b"".join(out))
            out.clear()

    async def _start_tls(self) -> asyncio.Transport:
        """STLS (RFC 2595 section 4): the handshake on the same connection."""
        assert self._ctx.tls is not None and self._transport is not None
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            self._transport,
            self,
            self._ctx.tls.current.context,
            server_side=True,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
        )
        if transport is None:
            raise ConnectionError("TLS handshake failed")
        self._transport = transport
        self._tls = True
        self._log_tls()
        return transport

    def _log_tls(self) -> None:
        assert self._transport is not None
        version, cipher = tls_details(self._transport)
        proxied, via = self._proxied, ""
        if proxied is not None:
            via = proxied.log_suffix
            if proxied.tls and version == "?":
                version, cipher = proxied.tls_version or "?", proxied.tls_cipher or "?"
        log.info("tls client=%s version=%s cipher=%s%s", self.peer, version, cipher, via)

    # -- the driver ---------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._transport is not None
        bind_session(session=self.session_id, client=self.peer)  # for JSON logs
        log.info(
            "connect client=%s%s", self.peer, self._proxied.log_suffix if self._proxied else ""
        )
        reason, abort = "closed", False  # abort: cut off (shutdown past its grace)
        session: Pop3Session | None = None
        try:
            if self._tls:
                self._log_tls()
            session = self._session = Pop3Session(
                self._ctx.session_config(
                    self.peer,
                    tls=self._tls,
                    stls=self._tls_mode == "starttls",
                    channel_binding=channel_binding(self._transport),
                )
            )
            self._write(session.greeting().data)
            session.receive_data(self._early)
            reason = await self._event_loop(session)
        except OutputStalled:  # closed without UPDATE, like any autologout
            user = printable(session.user if session else None)
            log.info("autologout user=%s client=%s output=unread", user, self.peer)
            reason = "autologout"
        except (ConnectionError, OSError, TimeoutError):
            reason = "disconnected"
        except asyncio.CancelledError:
            reason = "shutdown"
            abort = True
            raise
        except Exception:
            reason = "internal error"
            log.exception("internal error client=%s", self.peer)
        finally:
            await self._finish(session, reason, abort)

    async def _finish(self, session: Pop3Session | None, reason: str, abort: bool) -> None:
        await self._release()
        assert self._transport is not None
        if abort or reason in ("internal error", "autologout"):
            self._transport.abort()
        else:
            self._transport.close()
        self._ctx.per_ip[self.peer] -= 1
        if self._ctx.per_ip[self.peer] <= 0:
            del self._ctx.per_ip[self.peer]
        self.acct.logout(printable(session.user if session else None), self.peer, reason)

    async def _event_loop(self, session: Pop3Session) -> str:
        loop = asyncio.get_running_loop()
        idle_timeout = self._ctx.policy.idle_timeout
        last_command = loop.time()
        out: list[bytes] = []
        follow_up: Event | None = None
        while True:
            event = follow_up if follow_up is not None else session.next_event()
            follow_up = None
            if isinstance(event, Reply):
                if tarpitted(self._ctx.policy, session):
                    self._flush(out)  # what came before it leaves now, it after the delay
                    await tarpit(self._ctx, self._interrupt)
                    if self._lost or self._eof:
                        return "disconnected"
                out.append(event.data)
                last_command = loop.time()
                continue
            # Pipelined replies leave in one write, together with what follows them.
            self._flush(out)
            if isinstance(event, NeedData):
                if self._lost or self._eof:
                    return "disconnected"
                await self._drain()
                woken = await self._wait_for_data(last_command + idle_timeout - loop.time())
                if woken == "autologout":
                    log.info("autologout user=%s client=%s", printable(session.user), self.peer)
                    return woken
                if woken == "shutdown":
                    self._write(session.shutting_down().data)
                    return woken
                if session.client_errors or self._ctx.busy(self.peer):
                    # A session that sent garbage, or one of a flood of connections: its
                    # commands are background work, and a quiet client's go first.
                    await pacing.step()
                else:
                    pacing.foreground()
                continue
            last_command = loop.time()
            if isinstance(event, CloseConnection):
                return "quit"
            follow_up = await self._request(session, event)

    async def _request(self, session: Pop3Session, event: Event) -> Event | None:
        """Carry out one request of the core; returns the core's answer, if any."""
        if isinstance(event, Authenticate | AuthenticateApop | SaslCheck | OpenMaildrop):
            return await self._login(session, event)
        if isinstance(event, SaslFailed):
            return await self._login(session, event)
        if isinstance(event, ScramLookup):
            return await LoginHandler(self._ctx, session, self.peer).scram_lookup(event)
        if isinstance(event, Retrieve):
            await self._retrieve(session, event)
            return None
        if isinstance(event, CommitUpdate):
            return await asyncio.shield(self._update(session, event))
        if isinstance(event, StartTls):
            self._write(event.reply)
            binding = channel_binding(await self._start_tls())
            plaintext = self._ctx.plaintext_allowed(self.peer, tls=True)
            session.tls_established(
                plaintext_allowed=plaintext,
                mechanisms=self._ctx.mechanisms(
                    plaintext_allowed=plaintext, channel_binding=binding is not None
                ),
                channel_binding=binding,
            )
            return None
        raise AssertionError(f"unhandled event {event!r}")

    async def _login(
        self,
        session: Pop3Session,
        event: Authenticate | AuthenticateApop | SaslCheck | OpenMaildrop | SaslFailed,
    ) -> Event:
        result = await LoginHandler(self._ctx, session, self.peer).login(event)
        if result.maildrop is not None:
            self._maildrop = result.maildrop
            self._expire_days = result.expire_days
            self.acct.logged_in(len(session.listing), session.listing.live_octets)
            bind_session(session=self.session_id, client=self.peer, user=printable(session.user))
        return result.event

    async def _wait_for_data(self, timeout: float) -> str | None:
        """Wait for bytes (None); "autologout" when the autologout timer (RFC 1939 section
        3) ran out, "shutdown" when the server is closing idle sessions."""
        assert self._transport is not None
        self._data_arrived.clear()
        if self._transport.is_reading() is False and not self._lost:
            self._transport.resume_reading()
        if self._ctx.closing:
            return "shutdown"
        if timeout <= 0:
            return "autologout"
        self._ctx.idle.add(self._data_arrived)
        try:
            # asyncio.timeout: a timer on this task, not a new task per command (wait_for).
            async with asyncio.timeout(timeout):
                await self._data_arrived.wait()
        except TimeoutError:
            return "autologout"
        finally:
            self._ctx.idle.discard(self._data_arrived)
        return "shutdown" if self._ctx.closing else None

    async def _retrieve(self, session: Pop3Session, event: Retrieve) -> None:
        assert self._maildrop is not None
        start = self.acct.retrieval_started()
        sent = await send_message(
            self._maildrop,
            session,
            event,
            write=self._write,
            drain=self._drain,
            metrics=self._ctx.metrics,
        )
        if sent:
            self.acct.retrieval_done(start, top=event.encoder.is_top)
            if not event.encoder.is_top:
                self._retrieved.add(event.message.key)

    async def _update(self, session: Pop3Session, event: CommitUpdate) -> Event:
        """RFC 1939 section 6, UPDATE (server/update.py), then release the maildrop."""
        assert self._maildrop is not None
        answer = await commit_update(
            self._ctx,
            session,
            self._maildrop,
            event.keys,
            retrieved=self._retrieved,
            expire_days=self._expire_days,
        )
        self.acct.removed(answer.removed)
        await self._release()
        return answer.reply

    async def _release(self) -> None:
        maildrop, self._maildrop = self._maildrop, None
        if maildrop is not None:
            await maildrop.close()
