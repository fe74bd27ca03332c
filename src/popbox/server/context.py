"""What every connection of one server shares: configuration, backends, bookkeeping."""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import ipaddress
import itertools
import os
import secrets
import time
from dataclasses import dataclass, field

from popbox.auth.base import Authenticator
from popbox.auth.throttle import LoginDelayTracker, LoginThrottle
from popbox.metrics import ServerMetrics, current
from popbox.protocol.session import SessionConfig
from popbox.sasl.registry import CHANNEL_BINDING_MECHANISMS, MECHANISMS, PLAINTEXT_MECHANISMS
from popbox.server.start_queue import StartQueue
from popbox.server.tls import TlsManager
from popbox.storage.base import MaildropStore

# Connections from one address, open or waiting to start, from which its sessions' work
# is background work whenever a quieter client is being served (popbox/pacing.py). A
# household or an office behind one address has fewer at a time; a flood has more.
BUSY = 8

# Input octets the core may hold while a request (RETR, login) is open before the driver
# stops reading from the socket: pipelining stays possible, a flood stays bounded.
MAX_PENDING_INPUT = 64 * 1024

# RFC 8314 section 5.2 leaves the handshake timeout to the server; a client that has not
# finished it in this time is not a real client.
TLS_HANDSHAKE_TIMEOUT = 30.0

OAUTH_MECHANISMS = frozenset({"OAUTHBEARER", "XOAUTH2"})

# HAProxy's proxy-protocol.txt section 2: the receiver "may apply a short timeout ... (at
# least 3 seconds to cover a TCP retransmit)"; Dovecot's haproxy_timeout is 3 s as well.
PROXY_HEADER_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class ProxiedClient:
    """Who a PROXY protocol header says the client is (server/proxy_listener.py)."""

    address: str  # the client's; for LOCAL and UNKNOWN headers, the proxy's own
    proxy: str  # the connection's real peer, one of the listener's trusted_proxies
    local: bool  # LOCAL (a health check) or UNKNOWN: the proxy speaks for itself
    # PP2_TYPE_SSL with PP2_CLIENT_SSL: the client reached the proxy over TLS.
    tls: bool = False
    tls_version: str | None = None
    tls_cipher: str | None = None

    @property
    def log_suffix(self) -> str:
        return f" proxy={self.proxy}" + (" local" if self.local else "")


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """Per-server settings the connection driver needs (taken from the config)."""

    hostname: str
    idle_timeout: float
    plaintext: str  # "never" | "loopback" | "always"
    max_bad_commands: int
    max_connections: int
    max_connections_per_ip: int
    mechanisms: tuple[str, ...] = tuple(MECHANISMS)
    login_delay: int | None = None
    expire: str | None = None  # what CAPA announces: "NEVER" or a number of days
    expire_days: int | None = None  # enforced at UPDATE (RFC 2449 section 6.7)
    workarounds: frozenset[str] = frozenset()
    bad_command_delay: float = 0.0  # [limits] bad_command_delay


@dataclass(slots=True)
class ServerContext:
    policy: SessionPolicy
    authenticator: Authenticator
    store: MaildropStore
    throttle: LoginThrottle
    login_delays: LoginDelayTracker | None = None
    tls: TlsManager | None = None
    metrics: ServerMetrics = field(default_factory=current)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    per_ip: collections.Counter[str] = field(default_factory=collections.Counter)
    # The listeners' queues of connections waiting to start (server/start_queue.py).
    accept_queues: list[StartQueue] = field(default_factory=list)
    # Shutdown past shutdown_timeout: sessions waiting for a command (their wake-up events
    # are in `idle`) are told -ERR [SYS/TEMP] and closed, without UPDATE.
    closing: bool = False
    idle: set[asyncio.Event] = field(default_factory=set)
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def count_waiting(self) -> None:
        """popbox_connections_waiting: what the listeners' start queues hold now."""
        self.metrics.connections_waiting.set(sum(queue.waiting for queue in self.accept_queues))

    def refusal(self, peer_ip: str) -> tuple[str, str] | None:
        """Why a new connection from `peer_ip` is refused (metric label, reason), if it is:
        connection limits and blocked addresses."""
        if len(self.tasks) >= self.policy.max_connections:
            return "limit", "too many connections"
        if self.per_ip[peer_ip] >= self.policy.max_connections_per_ip:
            return "ip_limit", "too many connections from your address"
        if self.throttle.address_blocked(peer_ip, time.monotonic()):
            return "blocked", "too many failed logins from your address, try again later"
        return None

    def busy(self, peer_ip: str) -> bool:
        """Whether the address has BUSY connections or more, open or waiting to start:
        then its sessions' work is background work (popbox/pacing.py)."""
        waiting = sum(queue.waiting_from(peer_ip) for queue in self.accept_queues)
        return self.per_ip[peer_ip] + waiting >= BUSY

    def close_idle_sessions(self) -> None:
        self.closing = True
        for wake in self.idle:
            wake.set()

    def apop_timestamp(self) -> str:
        """RFC 1939 section 7: "<process-ID.clock@hostname>", unique per connection."""
        return f"<{os.getpid()}.{next(self._serial)}.{time.time_ns()}@{self.policy.hostname}>"

    def plaintext_allowed(self, peer_ip: str, *, tls: bool) -> bool:
        """The plaintext policy: TLS and (by default) loopback count as secure."""
        if tls or self.policy.plaintext == "always":
            return True
        if self.policy.plaintext == "never":
            return False
        return is_loopback(peer_ip)

    def mechanisms(self, *, plaintext_allowed: bool, channel_binding: bool) -> tuple[str, ...]:
        """The SASL mechanisms usable on a connection now (CAPA's SASL line, RFC 5034).
        The -PLUS ones need our own TLS: TLS that ended at a proxy has no channel to bind."""
        return _usable_mechanisms(self.policy.mechanisms, plaintext_allowed, channel_binding)

    def session_config(
        self,
        peer_ip: str,
        *,
        tls: bool,
        stls: bool,
        channel_binding: tuple[str, bytes] | None = None,
    ) -> SessionConfig:
        plaintext = self.plaintext_allowed(peer_ip, tls=tls)
        return SessionConfig(
            timestamp=self.apop_timestamp(),
            hostname=self.policy.hostname,
            plaintext_allowed=plaintext,
            tls_active=tls,
            stls_available=stls and not tls,
            mechanisms=self.mechanisms(
                plaintext_allowed=plaintext, channel_binding=channel_binding is not None
            ),
            channel_binding=channel_binding,
            nonce=new_nonce,
            login_delay=self.policy.login_delay,
            expire=self.policy.expire,
            workarounds=self.policy.workarounds,
            max_bad_commands=self.policy.max_bad_commands,
            on_command=self.metrics.command,
        )


@functools.lru_cache(maxsize=64)
def _usable_mechanisms(
    configured: tuple[str, ...], plaintext_allowed: bool, channel_binding: bool
) -> tuple[str, ...]:
    return tuple(
        name
        for name in configured
        if (plaintext_allowed or name not in PLAINTEXT_MECHANISMS)
        and (channel_binding or name not in CHANNEL_BINDING_MECHANISMS)
    )


def new_nonce() -> str:
    """A fresh SASL nonce: 18 random bytes in base64 (no "," or "=", RFC 5802 section 5)."""
    return base64.b64encode(secrets.token_bytes(18)).decode("ascii")


@functools.lru_cache(maxsize=4096)
def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback
