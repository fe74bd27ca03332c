"""What every connection of one server shares: configuration, backends, bookkeeping."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import itertools
import os
import time
from dataclasses import dataclass, field

from popbox.auth.base import Authenticator
from popbox.storage.base import MaildropStore

# Input octets the core may hold while a request (RETR, login) is open before the driver
# stops reading from the socket: pipelining stays possible, a flood stays bounded.
MAX_PENDING_INPUT = 64 * 1024


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """Per-server settings the connection driver needs (taken from the config)."""

    hostname: str
    idle_timeout: float
    failure_delay: float
    plaintext: str  # "never" | "loopback" | "always"
    max_bad_commands: int
    max_connections: int
    max_connections_per_ip: int


@dataclass(slots=True)
class ServerContext:
    policy: SessionPolicy
    authenticator: Authenticator
    store: MaildropStore
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    per_ip: collections.Counter[str] = field(default_factory=collections.Counter)
    _serial: itertools.count[int] = field(default_factory=itertools.count)

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


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback
