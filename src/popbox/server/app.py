"""Running the server: listeners, signals, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from popbox.auth.oauth import BearerVerifier, OAuthConfig
from popbox.auth.passwdfile import PasswdFileAuthenticator
from popbox.auth.throttle import LoginDelayTracker, LoginThrottle, ThrottleConfig
from popbox.config import Config
from popbox.delivery.lmtp import LmtpServer, start_lmtp
from popbox.sasl.registry import CHANNEL_BINDING_MECHANISMS, MECHANISMS
from popbox.server.connection import Pop3Connection
from popbox.server.context import (
    OAUTH_MECHANISMS,
    TLS_HANDSHAKE_TIMEOUT,
    ServerContext,
    SessionPolicy,
)
from popbox.server.proxy_listener import ProxyProtocolServer
from popbox.server.tls import TlsManager
from popbox.storage.base import MaildropStore
from popbox.storage.maildir import MaildirStore

log = logging.getLogger("popbox.server")

# RFC 1939 section 3: "the autologout timer MUST be of at least 10 minutes' duration".
RFC1939_MIN_IDLE_TIMEOUT = 600.0


def offered_mechanisms(config: Config) -> tuple[str, ...]:
    """The SASL mechanisms this server offers (before per-connection filtering)."""
    if config.auth.mechanisms is not None:
        return config.auth.mechanisms
    return tuple(
        name
        for name in MECHANISMS
        if (config.auth.oauth is not None or name not in OAUTH_MECHANISMS)
        and (config.tls.enabled or name not in CHANNEL_BINDING_MECHANISMS)
    )


def make_authenticator(config: Config) -> PasswdFileAuthenticator:
    oauth = config.auth.oauth
    verifier = None
    if oauth is not None:
        verifier = BearerVerifier(
            OAuthConfig(
                issuer=oauth.issuer,
                audience=oauth.audience,
                username_claim=oauth.username_claim,
                jwks_file=oauth.jwks_file,
                public_key=oauth.public_key,
            )
        )
    return PasswdFileAuthenticator(config.auth.passwd_file, oauth=verifier)


def make_store(config: Config) -> MaildropStore:
    """The mail store named by [mail] location (Dovecot's mail_location syntax)."""
    mail = config.mail
    if mail.scheme == "mbox":
        from popbox.storage.mbox import MboxStore  # noqa: PLC0415

        return MboxStore(
            mail.path_template,
            mbox_format=mail.mbox_format,
            dotlock_stale=mail.dotlock_stale,
            lock_timeout=mail.lock_timeout,
        )
    return MaildirStore(mail.path_template, uidl_format=mail.uidl_format, xuidl=mail.xuidl)


def make_context(config: Config) -> ServerContext:
    auth = config.auth
    policy = SessionPolicy(
        hostname=config.hostname,
        idle_timeout=config.idle_timeout,
        plaintext=auth.plaintext,
        max_bad_commands=config.limits.max_bad_commands,
        max_connections=config.limits.max_connections,
        max_connections_per_ip=config.limits.max_connections_per_ip,
        mechanisms=offered_mechanisms(config),
        login_delay=auth.login_delay,
        expire=None if config.mail.expire_days is None else str(config.mail.expire_days).upper(),
        expire_days=config.mail.expire_days if isinstance(config.mail.expire_days, int) else None,
        workarounds=frozenset(config.client_workarounds),
    )
    throttle = LoginThrottle(
        ThrottleConfig(
            failure_delay=auth.failure_delay,
            failure_delay_max=auth.failure_delay_max,
            max_failures=auth.max_failures,
            failure_window=auth.failure_window,
            block_time=auth.block_time,
        )
    )
    tls = None
    if config.tls.certificate is not None and config.tls.private_key is not None:
        tls = TlsManager(config.tls.certificate, config.tls.private_key, config.tls.min_version)
    return ServerContext(
        policy=policy,
        authenticator=make_authenticator(config),
        store=make_store(config),
        throttle=throttle,
        login_delays=None if auth.login_delay is None else LoginDelayTracker(auth.login_delay),
        tls=tls,
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
    servers: list[asyncio.Server | ProxyProtocolServer] = []
    bound: list[tuple[str, int]] = []
    for listener in config.listen:
        implicit = listener.tls == "implicit" and ctx.tls is not None
        # RFC 8314 section 3.3: on implicit-TLS ports the handshake comes first (after
        # the PROXY header, on a proxy_protocol listener).
        tls = ctx.tls.listener_context if implicit and ctx.tls else None
        server: asyncio.Server | ProxyProtocolServer
        if listener.proxy_protocol:
            server = ProxyProtocolServer(ctx, listener, tls)
            await server.start()
        else:
            server = await loop.create_server(
                functools.partial(Pop3Connection, ctx, listener.tls),
                listener.address,
                listener.port,
                reuse_address=True,
                backlog=1024,
                ssl=tls,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if implicit else None,
            )
        servers.append(server)
        proxy = ", proxy_protocol" if listener.proxy_protocol else ""
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            bound.append((host, port))
            log.info("listening on %s:%d (tls=%s%s)", host, port, listener.tls, proxy)
    lmtp = await start_delivery(config, ctx)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if ctx.tls is not None:
        # SIGHUP: new TLS files for new connections; running sessions keep theirs.
        loop.add_signal_handler(signal.SIGHUP, ctx.tls.reload)
    log.info("ready")
    if on_ready is not None:
        on_ready(bound)
    await stop.wait()
    log.info("shutting down: closing %d sessions without UPDATE", len(ctx.tasks))
    for server in servers:
        server.close()
    if lmtp is not None:
        await lmtp.close()
    for task in list(ctx.tasks):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*ctx.tasks, return_exceptions=True)
    for server in servers:
        await server.wait_closed()
    log.info("stopped")


async def start_delivery(config: Config, ctx: ServerContext) -> LmtpServer | None:
    """The [lmtp] listener (RFC 2033), delivering through the same store."""
    lmtp = config.lmtp
    if lmtp is None:
        return None
    server = await start_lmtp(
        store=ctx.store,
        authenticator=ctx.authenticator,
        address=lmtp.address,
        port=lmtp.port,
        path=None if lmtp.path is None else str(lmtp.path),
        max_message_size=lmtp.max_message_size,
        hostname=config.hostname,
    )
    if server.address is not None:
        log.info("lmtp listening on %s:%d", *server.address)
    else:
        log.info("lmtp listening on %s", server.path)
    return server


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (DESIGN: asyncio, uvloop when available)."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)
