"""Running the server: listeners, signals, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from popbox.auth.passwdfile import PasswdFileAuthenticator
from popbox.config import Config
from popbox.server.connection import Pop3Connection
from popbox.server.context import ServerContext, SessionPolicy
from popbox.storage.maildir import MaildirStore

log = logging.getLogger("popbox.server")

# RFC 1939 section 3: "the autologout timer MUST be of at least 10 minutes' duration".
RFC1939_MIN_IDLE_TIMEOUT = 600.0


def make_context(config: Config) -> ServerContext:
    policy = SessionPolicy(
        hostname=config.hostname,
        idle_timeout=config.idle_timeout,
        failure_delay=config.auth.failure_delay,
        plaintext=config.auth.plaintext,
        max_bad_commands=config.limits.max_bad_commands,
        max_connections=config.limits.max_connections,
        max_connections_per_ip=config.limits.max_connections_per_ip,
    )
    return ServerContext(
        policy=policy,
        authenticator=PasswdFileAuthenticator(config.auth.passwd_file),
        store=MaildirStore(config.mail.maildir_template),
    )


async def serve(
    config: Config, *, on_ready: Callable[[list[tuple[str, int]]], None] | None = None
) -> None:
    """Serve until SIGTERM or SIGINT; then stop accepting and close every session
    without UPDATE (nothing is deleted), releasing every maildrop lock."""
    if config.idle_timeout < RFC1939_MIN_IDLE_TIMEOUT:
        log.warning(
            "idle_timeout = %g s is below RFC 1939 section 3's minimum autologout timer "
            "of 10 minutes (600 s)",
            config.idle_timeout,
        )
    if config.auth.plaintext == "always":
        log.warning('auth.plaintext = "always": passwords may cross the network unencrypted')
    ctx = make_context(config)
    loop = asyncio.get_running_loop()
    servers = []
    bound: list[tuple[str, int]] = []
    for listener in config.listen:
        server = await loop.create_server(
            lambda: Pop3Connection(ctx),
            listener.address,
            listener.port,
            reuse_address=True,
            backlog=1024,
        )
        servers.append(server)
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            bound.append((host, port))
            log.info("listening on %s:%d (tls=%s)", host, port, listener.tls)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if on_ready is not None:
        on_ready(bound)
    await stop.wait()
    log.info("shutting down: closing %d sessions without UPDATE", len(ctx.tasks))
    for server in servers:
        server.close()
    for task in list(ctx.tasks):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*ctx.tasks, return_exceptions=True)
    for server in servers:
        await server.wait_closed()
    log.info("stopped")


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (DESIGN: asyncio, uvloop when available)."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)
