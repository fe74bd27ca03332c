"""One POP3 connection: the asyncio edge that drives the sans-IO core.

The transport's bytes go straight into the core's one input buffer; a driver task asks the
core for events and performs the I/O they request. Writes respect the transport's flow
control (pause_writing/resume_writing), so a client that does not read its RETR output
holds at most one block in our memory.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import cast

from popbox.auth.base import AuthOutcome, AuthResult
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
from popbox.server.context import MAX_PENDING_INPUT, ServerContext
from popbox.storage.base import Maildrop, MaildropLocked, MessageGone, StoreError

log = logging.getLogger("popbox.session")


@dataclass(slots=True)
class SessionCounts:
    """What the logout line reports (like Dovecot's pop3_logout_format)."""

    retrieved: int = 0
    deleted: int = 0
    bytes_sent: int = 0


def printable(text: str) -> str:
    """Client-chosen text made safe for a log line (no control characters, no newlines)."""
    return text.encode("unicode_escape").decode("ascii")[:100]


class Pop3Connection(asyncio.Protocol):
    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._transport: asyncio.Transport | None = None
        self._session: Pop3Session | None = None
        self._data_arrived = asyncio.Event()
        self._lost = False
        self._eof = False  # the client half-closed: answer what it sent, then close
        self._writable: asyncio.Future[None] | None = None
        self._maildrop: Maildrop | None = None
        self.peer = "?"
        self.counts = SessionCounts()

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else "?"
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Replies are small and each must go out at once (no Nagle + delayed-ACK stall).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = self._ctx
        if not self._admit(self._transport):
            return
        self._session = Pop3Session(
            SessionConfig(
                timestamp=ctx.apop_timestamp(),
                plaintext_allowed=ctx.plaintext_allowed(self.peer, tls=False),
                max_bad_commands=ctx.policy.max_bad_commands,
            )
        )
        ctx.per_ip[self.peer] += 1
        task = asyncio.get_running_loop().create_task(self._run())
        ctx.tasks.add(task)
        task.add_done_callback(ctx.tasks.discard)

    def data_received(self, data: bytes) -> None:
        session = self._session
        if session is None or self._transport is None:
            return
        session.receive_data(data)
        self._data_arrived.set()
        if session.buffered > MAX_PENDING_INPUT:
            self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        # `printf 'USER a\r\nPASS b\r\nQUIT\r\n' | nc` half-closes after its last command:
        # keep the transport open so the pending commands still get their replies.
        self._eof = True
        self._data_arrived.set()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._data_arrived.set()
        self._wake_writer(exc)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer(None)

    # -- the driver ---------------------------------------------------------------------

    def _admit(self, transport: asyncio.Transport) -> bool:
        """Connection limits: refuse politely (RFC 3206 [SYS/TEMP]) and close."""
        ctx = self._ctx
        if len(ctx.tasks) >= ctx.policy.max_connections:
            reason = "too many connections"
        elif ctx.per_ip[self.peer] >= ctx.policy.max_connections_per_ip:
            reason = "too many connections from your address"
        else:
            return True
        log.warning("refused client=%s reason=%r", self.peer, reason)
        transport.write(b"-ERR [SYS/TEMP] " + reason.encode("ascii") + b"\r\n")
        transport.close()
        return False

    def _wake_writer(self, exc: Exception | None) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(ConnectionError(str(exc)))

    async def _drain(self) -> None:
        if self._lost:
            raise ConnectionError("connection lost")
        if self._writable is not None:
            await self._writable

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        if data and not self._lost:
            self._transport.write(data)
            self.counts.bytes_sent += len(data)

    async def _run(self) -> None:
        session = self._session
        assert session is not None and self._transport is not None
        log.info("connect client=%s", self.peer)
        reason = "closed"
        try:
            self._write(session.greeting().data)
            reason = await self._event_loop(session)
        except ConnectionError:
            reason = "disconnected"
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        except Exception:
            reason = "internal error"
            log.exception("internal error client=%s", self.peer)
        finally:
            await self._release()
            if reason in ("internal error", "shutdown", "autologout"):
                self._transport.abort()
            else:
                self._transport.close()
            self._ctx.per_ip[self.peer] -= 1
            if self._ctx.per_ip[self.peer] <= 0:
                del self._ctx.per_ip[self.peer]
            c = self.counts
            log.info(
                "logout user=%s client=%s reason=%s retrieved=%d deleted=%d bytes=%d",
                printable(session.user or "-"),
                self.peer,
                reason,
                c.retrieved,
                c.deleted,
                c.bytes_sent,
            )

    async def _event_loop(self, session: Pop3Session) -> str:
        loop = asyncio.get_running_loop()
        idle_timeout = self._ctx.policy.idle_timeout
        last_command = loop.time()
        out: list[bytes] = []
        while True:
            event = session.next_event()
            if isinstance(event, Reply):
                out.append(event.data)
                last_command = loop.time()
                continue
            # Pipelined replies leave in one write, together with what follows them.
            if out:
                self._write(b"".join(out))
                out.clear()
            if isinstance(event, NeedData):
                if self._lost or self._eof:
                    return "disconnected"
                await self._drain()
                if not await self._wait_for_data(last_command + idle_timeout - loop.time()):
                    log.info("autologout user=%s client=%s", session.user or "-", self.peer)
                    return "autologout"
                continue
            last_command = loop.time()
            if isinstance(event, CloseConnection):
                return "quit"
            if isinstance(event, Authenticate | AuthenticateApop):
                out.append(await self._login(session, event))
            elif isinstance(event, Retrieve):
                out.append(await self._retrieve(session, event))
            elif isinstance(event, CommitUpdate):
                out.append(await asyncio.shield(self._update(session, event)))

    async def _wait_for_data(self, timeout: float) -> bool:
        """Wait for bytes; False when the autologout timer (RFC 1939 section 3) ran out."""
        assert self._transport is not None
        self._data_arrived.clear()
        if self._transport.is_reading() is False and not self._lost:
            self._transport.resume_reading()
        if timeout <= 0:
            return False
        try:
            await asyncio.wait_for(self._data_arrived.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _login(self, session: Pop3Session, event: Authenticate | AuthenticateApop) -> bytes:
        ctx = self._ctx
        loop = asyncio.get_running_loop()
        started = loop.time()
        if isinstance(event, Authenticate):
            mechanism = "USER"
            result = await ctx.authenticator.verify_password(event.user, event.password)
        else:
            mechanism = "APOP"
            result = await ctx.authenticator.verify_apop(event.user, event.timestamp, event.digest)
        if not result.ok:
            # The same reply after the same delay, whatever went wrong (unknown user or
            # wrong password): counted from the command, so hashing time does not show.
            await asyncio.sleep(max(0.0, started + ctx.policy.failure_delay - loop.time()))
            log.info(
                "login failed user=%s client=%s mechanism=%s reason=%s",
                printable(event.user),
                self.peer,
                mechanism,
                result.outcome.value,
            )
            if result.outcome is AuthOutcome.TEMPORARY_FAILURE:
                return session.auth_unavailable().data
            return session.auth_rejected().data
        return await self._open_maildrop(session, result, mechanism)

    async def _open_maildrop(self, session: Pop3Session, result: AuthResult, mech: str) -> bytes:
        user = result.user
        assert user is not None
        try:
            self._maildrop = await self._ctx.store.open(user)
        except MaildropLocked:
            log.info("login failed user=%s client=%s reason=in-use", user, self.peer)
            return session.maildrop_locked().data
        except (StoreError, OSError, ValueError) as error:
            log.error("maildrop unavailable user=%s client=%s error=%s", user, self.peer, error)
            return session.maildrop_unavailable().data
        listing = self._maildrop.listing
        log.info(
            "login ok user=%s client=%s mechanism=%s messages=%d",
            user,
            self.peer,
            mech,
            len(listing),
        )
        return session.maildrop_opened(user, listing).data

    async def _retrieve(self, session: Pop3Session, event: Retrieve) -> bytes:
        """Stream one message (shared/DESIGN.md: a store failure before +OK is -ERR; after
        +OK the connection is closed, since the reply can no longer be ended honestly)."""
        assert self._maildrop is not None
        stream = self._maildrop.read(event.message.key)
        encoder = event.encoder
        try:
            try:
                first = await anext(stream, b"")
            except MessageGone:
                return session.retrieve_failed(message_gone=True).data
            except (StoreError, OSError) as error:
                log.error("read failed user=%s error=%s", session.user, error)
                return session.retrieve_failed(message_gone=False).data
            pending = event.status_line + encoder.feed(first)
            async for block in stream:
                if encoder.done:
                    break
                self._write(pending)
                await self._drain()
                pending = encoder.feed(block)
            # The end of the reply leaves with its last block: one write, no small tail.
            self._write(pending + encoder.finish())
        except (StoreError, OSError) as error:
            log.error("read failed after +OK user=%s error=%s", session.user, error)
            raise ConnectionError("store failed during RETR") from error
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        session.retrieve_done()
        if not encoder.is_top:
            self.counts.retrieved += 1
        return b""

    async def _update(self, session: Pop3Session, event: CommitUpdate) -> bytes:
        """RFC 1939 section 6: remove the marked messages, then release the maildrop."""
        assert self._maildrop is not None
        result = await self._maildrop.delete(event.keys)
        self.counts.deleted += len(result.removed)
        if result.failed:
            log.error("update user=%s not removed=%d", session.user, len(result.failed))
        await self._release()
        return session.update_done(failed=len(result.failed)).data

    async def _release(self) -> None:
        maildrop, self._maildrop = self._maildrop, None
        if maildrop is not None:
            await maildrop.close()
