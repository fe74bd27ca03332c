"""A connection's turn in the start queue (server/start_queue.py): it becomes a POP3
session, after the TLS handshake on an implicit-TLS port (RFC 8314 section 3.3). The same
for plain listeners and, once the PROXY header has named the client, proxied ones."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl

from popbox import pacing
from popbox.server.connection import Pop3Connection
from popbox.server.context import TLS_HANDSHAKE_TIMEOUT, ProxiedClient, ServerContext

__all__ = ["start_session"]

log = logging.getLogger("popbox.session")


async def start_session(  # noqa: PLR0917 - the listener's, then the connection's
    ctx: ServerContext,
    tls_mode: str,
    tls: ssl.SSLContext | None,
    sock: socket.socket,
    peer: str,
    proxied: ProxiedClient | None = None,
) -> None:
    """`sock` from `peer` (the client a PROXY header named, `proxied`, if any) becomes a
    session; the transport owns the socket from here, and closes it on failure."""
    if ctx.busy(peer):
        await pacing.step()  # a flood's sessions start as background work
    else:
        pacing.foreground()
    try:
        await asyncio.get_running_loop().connect_accepted_socket(
            functools.partial(Pop3Connection, ctx, tls_mode, proxied, peer=peer),
            sock,
            ssl=tls,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls is not None else None,
        )
    except (OSError, TimeoutError) as error:
        via = proxied.log_suffix if proxied is not None else ""
        log.info("tls handshake failed client=%s%s: %s", peer, via, error)
