"""`popbox serve`: bind, give root up, then serve in this process or in worker processes.

The order matters: listening sockets are bound first (as root, ports 110 and 995 need
it; a port in use is refused before anything starts), then root is given up for good,
then everything the server reads is loaded once as the user it will run as (a TLS key
that user cannot read is refused now rather than at the first reload), and only then
does any process serve. `workers = 1` serves in this very process, without a master.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from popbox.config import Config, ConfigError
from popbox.db.startup import check_schemas, preload_databases
from popbox.metrics import cleanup_multiprocess, prepare_multiprocess
from popbox.metrics import preload as preload_metrics
from popbox.server import collector
from popbox.server.app import event_loop_factory, run, serve
from popbox.server.assembly import make_context, startup_warnings
from popbox.server.context import ServerContext
from popbox.server.listeners import bind_listeners
from popbox.server.privileges import drop_privileges
from popbox.server.workers import Supervisor

Endpoints = list[tuple[str, int]]


def start(config: Config, on_ready: Callable[[Endpoints], None] | None = None) -> int:
    """Serve until SIGTERM; the exit status (0 after a clean shutdown). Problems the
    administrator must fix raise ConfigError, naming the key."""
    startup_warnings(config)
    event_loop_factory()  # import uvloop now: after the drop its files may be unreadable
    # A database schema this popbox does not know stops the start before any port opens.
    asyncio.run(check_schemas(config))
    listeners = bind_listeners(config)
    # With workers, each process counts into files the master sums (popbox/metrics.py).
    multiprocess_metrics = config.workers > 1 and config.metrics is not None
    try:
        owned = [listeners.lmtp_path] if listeners.lmtp_path else []
        if multiprocess_metrics:
            # Before any metric exists; given to the user the workers run as (they write
            # their files there).
            owned.append(str(prepare_multiprocess()))
        preload_metrics()
        preload_databases(config)
        drop_privileges(config, owned)
        ctx = _checked_context(config)
        endpoints = listeners.endpoints()
        collector.freeze_loaded()

        def ready() -> None:
            if on_ready is not None:
                on_ready(endpoints)

        if config.workers == 1:
            collector.take_over()
            run(serve(config, listeners, ctx=ctx, on_ready=ready))
            return 0
        return Supervisor(config, listeners, on_ready=ready).run()
    finally:
        listeners.close()
        if multiprocess_metrics:
            cleanup_multiprocess()


def _checked_context(config: Config) -> ServerContext:
    """What every session shares, made once now so that unreadable files stop the start."""
    try:
        return make_context(config)
    except (OSError, ssl.SSLError, ValueError) as error:
        who = f" as user {config.user!r}" if config.user else ""
        source = str(config.source) if config.source is not None else None
        message = f"cannot load the certificate and key{who}: {error}"
        raise ConfigError(message, "tls", source) from None
