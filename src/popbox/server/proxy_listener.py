"""Listeners behind a proxy: the PROXY protocol header first, then TLS, then POP3.

HAProxy's proxy-protocol.txt section 2: "The receiver MUST NOT start processing the
connection before it receives a complete and valid PROXY protocol header", and it must
only accept the header from trusted proxies (section 5). So these listeners accept on
their own sockets instead of asyncio's create_server (whose transports start reading and
would swallow the octets after the header): the peer is checked against trusted_proxies,
the header is read with MSG_PEEK and then exactly its length consumed (the spec's own
sample code does the same). Only then, once its turn in the start queue comes (by the
client's address, as on other listeners: server/start_queue.py), does the socket become a
transport, through loop.connect_accepted_socket, which runs the implicit-TLS handshake on
the octets that follow the header just as create_server(ssl=...) would. Anything else
closes the connection before a single octet is sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from popbox.config.model import ListenConfig
from popbox.server.accepting import ACCEPT_RETRY_DELAY, RETRY_AT_ONCE
from popbox.server.context import (
    PROXY_HEADER_TIMEOUT,
    ProxiedClient,
    ServerContext,
)
from popbox.server.proxy_header import (
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_VERSION,
    V2_MAX_LENGTH,
    Command,
    ProxyHeader,
    ProxyHeaderError,
    Transport,
    parse_proxy_header,
)
from popbox.server.start_queue import StartQueue
from popbox.server.starting import start_session

log = logging.getLogger("popbox.session")

# The spec sizes headers to fit one 536-octet segment; larger v2 headers take more reads.
PEEK_SIZE = 4096
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted(address: str, networks: tuple[Network, ...]) -> bool:
    """Is `address` (an IPv4-mapped IPv6 address counts as IPv4) in one of `networks`?"""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def proxied_client(header: ProxyHeader, proxy: str) -> ProxiedClient:
    """The client a header names; LOCAL (health checks), UNKNOWN and address families
    other than TCP over IPv4/IPv6 keep the proxy's own address (section 2.1, 2.2)."""
    source = header.source if header.transport is Transport.STREAM else None
    if header.command is not Command.PROXY or source is None:
        return ProxiedClient(address=proxy, proxy=proxy, local=True)
    address = ipaddress.ip_address(source[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # one spelling per client for limits and logs
    ssl_info = header.ssl
    return ProxiedClient(
        address=str(address),
        proxy=proxy,
        local=False,
        tls=header.client_tls,
        tls_version=ssl_info.text(PP2_SUBTYPE_SSL_VERSION) if ssl_info else None,
        tls_cipher=ssl_info.text(PP2_SUBTYPE_SSL_CIPHER) if ssl_info else None,
    )


async def read_proxy_header(sock: socket.socket) -> ProxyHeader:
    """Read exactly one header from a non-blocking socket, leaving what follows it."""
    loop = asyncio.get_running_loop()
    buffer = b""
    while True:
        await _readable(loop, sock)
        try:
            peeked = sock.recv(min(PEEK_SIZE, V2_MAX_LENGTH - len(buffer)), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        if not peeked:
            raise ProxyHeaderError("connection closed before the end of the PROXY header")
        result = parse_proxy_header(buffer + peeked)
        if isinstance(result, ProxyHeader):
            _consume(sock, result.length - len(buffer))
            return result
        # Incomplete: every octet seen so far belongs to the header.
        buffer += _consume(sock, len(peeked))


def _consume(sock: socket.socket, size: int) -> bytes:
    """Take `size` octets that MSG_PEEK has already seen (so they are there to take)."""
    taken = b""
    while len(taken) < size:
        chunk = sock.recv(size - len(taken))
        if not chunk:
            raise ProxyHeaderError("connection closed before the end of the PROXY header")
        taken += chunk
    return taken


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    waiter: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, _wake, waiter)
    try:
        await waiter
    finally:
        loop.remove_reader(fd)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ProxyProtocolServer:
    """One [[listen]] with proxy_protocol = true; close()/wait_closed() like asyncio's."""

    def __init__(
        self,
        ctx: ServerContext,
        listener: ListenConfig,
        tls: ssl.SSLContext | None,
        sock: socket.socket,
        *,
        max_waiting: Callable[[], int],
    ) -> None:
        self._ctx = ctx
        self._listener = listener
        self._tls = tls
        self._networks = tuple(ipaddress.ip_network(n) for n in listener.trusted_proxies or ())
        # Bound and listening already (server/listeners.py), maybe shared with workers.
        self.sockets: list[socket.socket] = [sock]
        self._tasks: set[asyncio.Task[None]] = set()  # accept loops and pending headers
        # Once its header has named the client, a connection waits its turn to start, by
        # the client's address as on other listeners: a flood relayed by the proxy then
        # delays a client from elsewhere by a few loop turns, not by the whole flood.
        self.queue = StartQueue(
            self._start,
            max_waiting=max_waiting,
            on_dropped=ctx.metrics.closed_unstarted,
            on_waiting=ctx.count_waiting,
            open_from=ctx.per_ip.__getitem__,
            busy=ctx.busy,
        )
        self._clients: weakref.WeakKeyDictionary[socket.socket, ProxiedClient] = (
            weakref.WeakKeyDictionary()
        )

    async def start(self) -> None:
        for sock in self.sockets:
            sock.setblocking(False)
            self._spawn(self._accept(sock))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Stop accepting and drop connections still without a header; sessions that
        started are the server's (ServerContext.tasks)."""
        for task in self._tasks:
            task.cancel()
        for sock in self.sockets:
            sock.close()
        self.queue.close_waiting()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.queue.wait_closed()

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listening)
            except ConnectionAbortedError:
                continue
            except OSError as error:
                log.error("accept failed: %s", error)
                if error.errno not in RETRY_AT_ONCE:
                    await asyncio.sleep(ACCEPT_RETRY_DELAY)
                continue
            self._spawn(self._handshake(sock, str(address[0])))

    async def _handshake(self, sock: socket.socket, peer: str) -> None:
        """Trusted peer, header, then the start queue (server/start_queue.py) by the
        client's address."""
        try:
            sock.setblocking(False)
            proxied = await self._proxied(sock, peer)
        except BaseException:
            sock.close()
            raise
        if proxied is None:
            sock.close()  # section 2.1: "abort the connection as soon as possible"
            return
        self._clients[sock] = proxied
        self.queue.put(sock, proxied.address)

    async def _start(self, sock: socket.socket, peer: str) -> None:
        """A connection's turn (StartQueue)."""
        proxied = self._clients.pop(sock)
        await start_session(self._ctx, self._listener.tls, self._tls, sock, peer, proxied)

    async def _proxied(self, sock: socket.socket, peer: str) -> ProxiedClient | None:
        """The client the header names, or None (logged) when the connection must close."""
        if not trusted(peer, self._networks):
            reason = "not in trusted_proxies"
        elif len(self._tasks) > self._ctx.policy.max_connections:
            reason = "too many connections waiting for a PROXY header"
        else:
            try:
                async with asyncio.timeout(PROXY_HEADER_TIMEOUT):
                    header = await read_proxy_header(sock)
            except TimeoutError:
                reason = f"no PROXY header within {PROXY_HEADER_TIMEOUT:g} s"
            except ProxyHeaderError as error:
                reason = f"invalid PROXY header: {error}"
            except OSError as error:
                reason = f"connection failed before the PROXY header: {error}"
            else:
                return proxied_client(header, peer)
        log.warning("refused client=%s reason=%r", peer, reason)
        self._ctx.metrics.connections.inc()
        self._ctx.metrics.refused("proxy")
        return None
