"""The load generator's POP3 client side: light per reply (benchmarks/loadgen.py).

Replies are read without a per-line step: a Protocol appends what arrives to one buffer and
looks for the end of the reply in it (CRLF for a status line, CRLF.CRLF for a multi-line
reply, RFC 1939 section 3), scanning only the bytes that are new; a RETR body is counted,
never copied or split into lines.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from seed import PASSWORD

ProtocolT = TypeVar("ProtocolT", bound=asyncio.BaseProtocol)

CRLF = b"\r\n"
END_OF_MULTILINE = b"\r\n.\r\n"  # RFC 1939 section 3: CRLF "." CRLF ends a multi-line reply
HEAD = 100  # octets of a reply's start kept for checking it; the rest is only counted
IP_BIND_ADDRESS_NO_PORT = 24  # Linux: pick the source port at connect(), not at bind()


class ServerError(Exception):
    """The server answered -ERR, or something other than a POP3 reply."""


class Pop3Client(asyncio.Protocol):
    """One connection; `reply()` waits for the next complete status or multi-line reply."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already searched for the terminator
        self._terminator = CRLF
        self._waiter: asyncio.Future[tuple[bytes, int]] | None = None
        self._lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self.received += len(data)
        if self._waiter is not None:
            self._complete()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("connection closed by the server")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._lost)
            self._waiter = None

    def _complete(self) -> None:
        buffer = self._buffer
        terminator = self._terminator
        if terminator is END_OF_MULTILINE and buffer[:1] == b"-":
            terminator = CRLF  # -ERR is a single line
        end = buffer.find(terminator, self._scanned)
        if end < 0:
            self._scanned = max(0, len(buffer) - len(terminator) + 1)
            return
        end += len(terminator)
        head = bytes(buffer[: min(end, HEAD)])
        del buffer[:end]
        self._scanned = 0
        waiter, self._waiter = self._waiter, None
        assert waiter is not None
        waiter.set_result((head, end))

    async def reply(self, multiline: bool = False) -> tuple[bytes, int]:
        """The next reply's first octets and its length; ServerError unless +OK."""
        self._terminator = END_OF_MULTILINE if multiline else CRLF
        waiter: asyncio.Future[tuple[bytes, int]] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._complete()
        if not waiter.done() and self._lost is not None:
            raise self._lost
        head, size = await waiter
        if not head.startswith(b"+OK"):
            raise ServerError(head.decode("latin-1").strip())
        return head, size

    async def command(self, line: bytes, multiline: bool = False) -> tuple[bytes, int]:
        assert self.transport is not None
        self.transport.write(line)
        return await self.reply(multiline)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Scripted(asyncio.Protocol):
    """A whole session without a coroutine step per reply: after the greeting and after
    each +OK status line the next command goes out; `done` resolves after the last reply.
    The lightest way to drive session churn (one future per session)."""

    def __init__(self, commands: tuple[bytes, ...], done: asyncio.Future[None]) -> None:
        self.transport: asyncio.Transport | None = None
        self._commands = commands
        self._step = 0
        self._buffer = b""
        self._done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while (end := buffer.find(CRLF)) >= 0:
            if not buffer.startswith(b"+OK"):
                self._finish(ServerError(buffer[:end].decode("latin-1")))
                return
            buffer = buffer[end + 2 :]
            if self._step == len(self._commands):
                self._finish(None)
                return
            assert self.transport is not None
            self.transport.write(self._commands[self._step])
            self._step += 1
        self._buffer = buffer

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or ConnectionResetError("connection closed by the server"))

    def _finish(self, error: BaseException | None) -> None:
        if self.transport is not None:
            self.transport.close()
        if self._done.done():
            return
        if error is None:
            self._done.set_result(None)
        else:
            self._done.set_exception(error)


@dataclass
class Target:
    host: str
    port: int
    tls: ssl.SSLContext | None
    sources: int  # source addresses 127.0.0.1 .. 127.0.0.<sources>
    timeout: float  # seconds for a login, and for any reply (TimeoutError is an OSError)

    async def socket(self, index: int) -> socket.socket:
        """A TCP socket connected from 127.0.0.<1 + index % sources>. connect() by hand:
        uvloop's sock_connect() sends even an IP literal through getaddrinfo in a thread."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((f"127.0.0.{1 + index % self.sources}", 0))
            error = sock.connect_ex((self.host, self.port))
            if error == errno.EINPROGRESS:
                loop = asyncio.get_running_loop()
                writable: asyncio.Future[None] = loop.create_future()
                loop.add_writer(sock.fileno(), writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(sock.fileno())
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
        except BaseException:
            sock.close()
            raise
        return sock

    async def open(
        self, index: int, factory: Callable[[], ProtocolT]
    ) -> tuple[asyncio.BaseTransport, ProtocolT]:
        """A transport over socket(index), TLS too when the target has it."""
        sock = await self.socket(index)
        try:
            return await asyncio.get_running_loop().create_connection(
                factory,
                sock=sock,
                ssl=self.tls,
                server_hostname="localhost" if self.tls else None,
            )
        except BaseException:
            sock.close()
            raise

    async def session(self, index: int, commands: tuple[bytes, ...]) -> None:
        """One whole scripted session (see Scripted)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        transport, _ = await self.open(index, lambda: Scripted(commands, done))
        try:
            await done
        finally:
            transport.close()

    async def connect(self, index: int) -> Pop3Client:
        """Connect from 127.0.0.<1 + index % sources> and read the greeting."""
        _, client = await self.open(index, Pop3Client)
        try:
            await client.reply()
        except BaseException:
            client.close()
            raise
        return client

    async def login(self, index: int, user: str) -> Pop3Client:
        async with asyncio.timeout(self.timeout):
            return await self._login(index, user)

    async def _login(self, index: int, user: str) -> Pop3Client:
        client = await self.connect(index)
        try:
            await client.command(b"USER " + user.encode() + CRLF)
            await client.command(b"PASS " + PASSWORD.encode() + CRLF)
        except BaseException:
            client.close()
            raise
        return client
