"""Binding listeners as asyncio would, with errors that name the key: a port in use, an
address not on this host, a port below 1024 without root."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from popbox.config.checks import ConfigError, endpoint
from popbox.config.model import Config, ListenConfig


def check_ports_free(config: Config) -> None:
    """Bind every listener's address:port as the server will, then let go.

    The check `popbox serve` makes by binding for real (server/listeners.py keeps the
    sockets), for callers that must not keep them. All sockets are held until the end so
    that two listeners overlapping each other (0.0.0.0:110 and 127.0.0.1:110) are caught
    too. Port 0 is never busy.
    """
    source = str(config.source) if config.source is not None else None
    held: list[socket.socket] = []
    try:
        for index, listener in enumerate(config.listen):
            if listener.port == 0:
                continue
            try:
                held.extend(bind_listener(listener))
            except ConfigError as error:
                raise error.within(f"listen[{index}]", source) from None
        lmtp = config.lmtp
        if lmtp is not None and lmtp.port:
            # LMTP binds 127.0.0.1 unless told otherwise (it has no authentication).
            as_listener = ListenConfig(address=lmtp.address or "127.0.0.1", port=lmtp.port)
            try:
                held.extend(bind_listener(as_listener))
            except ConfigError as error:
                raise error.within("lmtp", source) from None
        metrics = config.metrics
        if metrics is not None and metrics.port:
            as_listener = ListenConfig(address=metrics.address, port=metrics.port)
            try:
                held.extend(bind_listener(as_listener))
            except ConfigError as error:
                raise error.within("metrics", source) from None
    finally:
        for sock in held:
            sock.close()


def bind_listener(listener: ListenConfig) -> list[socket.socket]:
    """Sockets bound and listening on every address `listener` resolves to, with the
    options asyncio's create_server sets; a ConfigError names the key at fault."""
    try:
        infos = socket.getaddrinfo(
            listener.address, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        message = f"cannot resolve {listener.address!r}: {error.strerror}"
        raise ConfigError(message, "address") from None
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue  # a family this host lacks (no IPv6): asyncio skips it too
            bound.append(sock)
            _bind_like_server(sock, family, sockaddr)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def _bind_like_server(sock: socket.socket, family: int, sockaddr: Any) -> None:
    # The options asyncio's create_server sets on POSIX, so we refuse exactly what it would.
    if os.name == "posix":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    where = endpoint(sockaddr[0], sockaddr[1])
    try:
        sock.bind(sockaddr)
        # Listening matters: with SO_REUSEADDR, Linux lets two merely bound sockets share
        # a port and refuses only while one of them listens.
        sock.listen(1)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ConfigError(f"{where} is already in use", "port") from None
        if error.errno == errno.EACCES:
            raise ConfigError(f"permission denied to bind {where}", "port") from None
        if error.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"{sockaddr[0]} is not an address of this host", "address") from None
        raise ConfigError(f"cannot bind {where}: {error.strerror}") from None
