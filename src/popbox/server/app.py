"""Running the server in one process: what sessions share, signals, reloads, draining."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import pickle
import signal
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from popbox.config import Config
from popbox.db.startup import close_backends
from popbox.delivery.lmtp import LmtpServer, start_lmtp
from popbox.metrics import served_by_master, start_metrics_server
from popbox.server import collector, sdnotify
from popbox.server.accepting import EagerAcceptServer
from popbox.server.assembly import apply_config, make_context
from popbox.server.context import (
    ServerContext,
)
from popbox.server.descriptors import descriptor_limit, reserve_descriptor_table, waiting_room
from popbox.server.listeners import Listeners, PopSocket
from popbox.server.proxy_listener import ProxyProtocolServer
from popbox.server.reload import reload_config
from popbox.server.starting import start_session

log = logging.getLogger("popbox.server")


async def serve(
    config: Config,
    listeners: Listeners,
    *,
    ctx: ServerContext | None = None,
    control: socket.socket | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """One process's event loop on the bound `listeners`, until SIGTERM or SIGINT; then
    drain (stop accepting, give sessions shutdown_timeout seconds, close the rest without
    UPDATE: nothing is deleted, every maildrop lock is released).

    Alone (`control` is None) this process is the whole server: it logs "ready", tells
    systemd, and reloads on SIGHUP. A worker (server/workers.py) reports to its master over
    `control` instead, takes reloaded configurations from it, and drains when it goes away.
    """
    ctx = ctx or make_context(config)
    loop = asyncio.get_running_loop()
    reserve_descriptor_table()  # before a burst of connections needs it (descriptors.py)
    servers = [await start_listener(ctx, entry) for entry in listeners.pop3]
    lmtp = [await start_delivery(config, ctx, sock) for sock in listeners.lmtp]
    # With worker processes the master serves the metrics of all (popbox/metrics.py).
    exporter = None if served_by_master() else start_metrics_server(config)
    if exporter is not None:
        log.info("metrics listening on %s:%d", *exporter.address)
    running = _Running(config, ctx, lmtp)
    # Full garbage collections, if this process took their schedule over (collector.py).
    collections = asyncio.create_task(collector.run()) if collector.taken_over() else None
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, running.stop.set)
    if control is None:
        loop.add_signal_handler(signal.SIGHUP, running.reload_from_file)
    else:
        control.setblocking(False)
        loop.add_reader(control.fileno(), running.from_master, control)
    # A worker is forked with these blocked, so none arrives before its handler is set.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    if control is None:
        log.info("ready")
        sdnotify.ready()
        if on_ready is not None:
            on_ready()
    else:
        control.send(MSG_READY)
    await running.stop.wait()
    if control is None:
        sdnotify.stopping()
    else:
        loop.remove_reader(control.fileno())
    await drain(ctx, servers, lmtp, running.config.shutdown_timeout)
    if collections is not None:
        collections.cancel()
    if exporter is not None:
        exporter.close()
    if control is None:
        listeners.remove_unix_socket()
        log.info("stopped")


async def start_listener(
    ctx: ServerContext, entry: PopSocket
) -> EagerAcceptServer | ProxyProtocolServer:
    """Accept POP3 sessions on one bound listener."""
    listener = entry.listener
    implicit = listener.tls == "implicit" and ctx.tls is not None
    # RFC 8314 section 3.3: on implicit-TLS ports the handshake comes first (after the
    # PROXY header, on a proxy_protocol listener).
    tls = ctx.tls.listener_context if implicit and ctx.tls else None
    # Connections waiting to start hold a descriptor each: what the sessions leave
    # (server/descriptors.py).
    nofile = descriptor_limit()

    def max_waiting() -> int:
        room = waiting_room(nofile, len(ctx.tasks), len(ctx.accept_queues))
        return min(ctx.policy.max_connections, room)

    if listener.proxy_protocol:
        proxied = ProxyProtocolServer(ctx, listener, tls, entry.sock, max_waiting=max_waiting)
        await proxied.start()
        ctx.accept_queues.append(proxied.queue)
        return proxied
    server = EagerAcceptServer(
        entry.sock,
        functools.partial(start_session, ctx, listener.tls, tls),
        max_waiting=max_waiting,
        on_dropped=ctx.metrics.closed_unstarted,
        on_waiting=ctx.count_waiting,
        open_from=ctx.per_ip.__getitem__,
        busy=ctx.busy,
    )
    server.start_serving()
    ctx.accept_queues.append(server)
    return server


# Worker <-> master messages (server/workers.py), one datagram each on a SOCK_SEQPACKET pair.
MSG_READY = b"ready"  # worker: listening
MSG_RELOAD = b"reload"  # master: + the pickled Config to apply
MSG_RELOADED = b"reloaded"  # worker: applied it
HANDLED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


class _Running:
    """What a reload changes in a running event loop."""

    def __init__(self, config: Config, ctx: ServerContext, lmtp: list[LmtpServer]) -> None:
        self.config = config
        self.ctx = ctx
        self.lmtp = lmtp
        self.stop = asyncio.Event()

    def reload_from_file(self) -> None:
        """SIGHUP in a single process: re-read the file, apply what can change live."""
        if self.stop.is_set():
            return
        sdnotify.reloading()
        self.config = reload_config(self.config)
        apply_config(self.ctx, self.config, self.lmtp)
        sdnotify.ready()

    def from_master(self, control: socket.socket) -> None:
        try:
            message = control.recv(MAX_CONTROL_MESSAGE)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if not message:  # the master is gone: finish like on SIGTERM
            log.warning("worker pid=%d: the master process is gone; shutting down", os.getpid())
            asyncio.get_running_loop().remove_reader(control.fileno())
            self.stop.set()
            return
        if message.startswith(MSG_RELOAD) and not self.stop.is_set():
            # From our own parent over a private socketpair: trusted like our own memory.
            self.config = pickle.loads(message[len(MSG_RELOAD) :])
            apply_config(self.ctx, self.config, self.lmtp)
            with contextlib.suppress(OSError):
                control.send(MSG_RELOADED)


# A pickled Config is a few KiB; a datagram larger than this is not from our master.
MAX_CONTROL_MESSAGE = 1 << 20

# Seconds sessions told to go (past shutdown_timeout) get to write their -ERR and close,
# and those in the middle of a command to finish it, before they are cut off.
CLOSE_GRACE = 1.0


async def drain(
    ctx: ServerContext,
    servers: Sequence[EagerAcceptServer | ProxyProtocolServer],
    lmtp: Sequence[LmtpServer],
    timeout: float,
) -> None:
    """Stop accepting, wait up to `timeout` seconds for the sessions to end, then close
    what is left without UPDATE (idle sessions are told -ERR [SYS/TEMP] first)."""
    for server in servers:
        server.close()
    for delivery in lmtp:
        delivery.server.close()
    loop = asyncio.get_running_loop()
    log.info(
        "shutting down pid=%d: not accepting; %d sessions have up to %g s to finish",
        os.getpid(),
        len(ctx.tasks),
        timeout,
    )
    deadline = loop.time() + timeout
    while ctx.tasks and (left := deadline - loop.time()) > 0:
        await asyncio.wait(set(ctx.tasks), timeout=left)
    if ctx.tasks:
        log.info("shutdown_timeout reached: closing %d sessions without UPDATE", len(ctx.tasks))
        ctx.close_idle_sessions()
        await asyncio.wait(set(ctx.tasks), timeout=CLOSE_GRACE)
    busy = set(ctx.tasks)
    if busy:
        log.warning("cutting off %d sessions in the middle of a command", len(busy))
    for task in busy:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*busy, return_exceptions=True)
    for delivery in lmtp:
        await delivery.close()
    for server in servers:
        await server.wait_closed()
    await close_backends(ctx.store, ctx.authenticator)  # this process's database pools


async def start_delivery(config: Config, ctx: ServerContext, sock: socket.socket) -> LmtpServer:
    """The [lmtp] listener (RFC 2033) on its bound socket, delivering through the store."""
    lmtp = config.lmtp
    assert lmtp is not None
    return await start_lmtp(
        store=ctx.store,
        authenticator=ctx.authenticator,
        address=None,
        port=None,
        path=None,
        max_message_size=lmtp.max_message_size,
        hostname=config.hostname,
        sock=sock,
    )


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (DESIGN: asyncio, uvloop when available)."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main)
