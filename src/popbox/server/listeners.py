"""The listening sockets: bound once, before anything starts, and shared by every worker.

Binding in the first process means a port in use (or one below 1024 without root) is
refused with the key at fault before any worker runs, ports below 1024 can be bound as root
before the privilege drop, and every worker accepts from the same sockets: the kernel hands
each new connection to whichever worker accepts first, so a busy or stopped worker strands
nobody (SO_REUSEPORT would hash some connections to it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from dataclasses import dataclass, field

from popbox.config import Config, ConfigError, ListenConfig
from popbox.config.ports import bind_listener
from popbox.delivery.lmtp import DEFAULT_ADDRESS, bind_unix_socket

log = logging.getLogger("popbox.server")

# listen(2) backlog: connections the kernel queues until a worker accepts them (asyncio's
# create_server default is 100; a burst of POP3 clients polling on the minute needs more).
# A connect that finds the queue full is dropped and retried by the client a second later
# (then 3 s, 7 s). Workers empty the queue every loop turn (server/accepting.py), so it
# only has to hold what arrives during one turn. Linux caps it at net.core.somaxconn (4096
# by default since 5.4).
LISTEN_BACKLOG = 4096


@dataclass(frozen=True, slots=True)
class PopSocket:
    listener: ListenConfig
    sock: socket.socket


@dataclass(slots=True)
class Listeners:
    pop3: list[PopSocket] = field(default_factory=list)
    lmtp: list[socket.socket] = field(default_factory=list)
    lmtp_path: str | None = None  # the unix socket's path, unlinked at the end

    def endpoints(self) -> list[tuple[str, int]]:
        """(host, port) of every POP3 socket, in [[listen]] order."""
        return [entry.sock.getsockname()[:2] for entry in self.pop3]

    def sockets(self) -> list[socket.socket]:
        return [*(entry.sock for entry in self.pop3), *self.lmtp]

    def close(self) -> None:
        """Close this process's copies: once every process has, new connections are
        refused."""
        for sock in self.sockets():
            sock.close()

    def remove_unix_socket(self) -> None:
        """The LMTP socket's path goes with the server (as asyncio's unix servers do)."""
        path = self.lmtp_path
        if path is None:
            return
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)


def bind_listeners(config: Config) -> Listeners:
    """Bind every [[listen]] address and the [lmtp] listener; log where each listens."""
    source = str(config.source) if config.source is not None else None
    bound = Listeners()
    try:
        for index, listener in enumerate(config.listen):
            try:
                sockets = bind_listener(listener)
            except ConfigError as error:
                raise error.within(f"listen[{index}]", source) from None
            for sock in sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    # Replies are small and each must go out at once (no Nagle + delayed
                    # ACK stall); Linux gives accepted sockets the listener's setting.
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _listen(sock)
                bound.pop3.append(PopSocket(listener, sock))
        _bind_lmtp(config, bound, source)
    except BaseException:
        bound.close()
        raise
    for entry in bound.pop3:
        host, port = entry.sock.getsockname()[:2]
        proxy = ", proxy_protocol" if entry.listener.proxy_protocol else ""
        log.info("listening on %s:%d (tls=%s%s)", host, port, entry.listener.tls, proxy)
    for sock in bound.lmtp:
        if bound.lmtp_path is not None:
            log.info("lmtp listening on %s", bound.lmtp_path)
        else:
            log.info("lmtp listening on %s:%d", *sock.getsockname()[:2])
    return bound


def _bind_lmtp(config: Config, bound: Listeners, source: str | None) -> None:
    lmtp = config.lmtp
    if lmtp is None:
        return
    if lmtp.path is not None:
        path = str(lmtp.path)
        try:
            sock = bind_unix_socket(path)
        except OSError as error:
            message = f"cannot bind {path}: {error.strerror or error}"
            raise ConfigError(message, "lmtp.path", source) from None
        bound.lmtp.append(sock)
        bound.lmtp_path = path
        _listen(sock)
        return
    as_listener = ListenConfig(address=lmtp.address or DEFAULT_ADDRESS, port=lmtp.port or 0)
    try:
        sockets = bind_listener(as_listener)
    except ConfigError as error:
        raise error.within("lmtp", source) from None
    bound.lmtp.extend(sockets)
    for sock in sockets:
        _listen(sock)


def _listen(sock: socket.socket) -> None:
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
