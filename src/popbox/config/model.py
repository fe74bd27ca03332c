"""The configuration as frozen dataclasses, each validated on construction."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from popbox.config.checks import (
    MAILDIR_SCHEME,
    Check,
    ConfigError,
    check_fields,
    endpoint,
    expected,
    hostname,
    instance_of,
    int_range,
    listen_address,
    mail_location,
    normal_address,
    one_of,
    optional,
    readable_file,
    seconds,
)

TlsMode = Literal["none", "starttls", "implicit"]
PlaintextPolicy = Literal["never", "loopback", "always"]
LogLevel = Literal["debug", "info", "warning", "error"]

# RFC 1939 section 3: "the autologout timer MUST be of at least 10 minutes' duration".
RFC1939_MIN_AUTOLOGOUT = 600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenConfig:
    address: str = "127.0.0.1"  # an IP literal or a host name
    port: int = 1110  # 0 = any free port (tests)
    tls: TlsMode = "none"

    def __post_init__(self) -> None:
        check_fields(self, _LISTEN_CHECKS)


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    certificate: Path | None = None
    private_key: Path | None = None

    def __post_init__(self) -> None:
        check_fields(self, _TLS_CHECKS)
        if self.certificate is not None and self.private_key is None:
            raise ConfigError("required when tls.certificate is given", "private_key")
        if self.private_key is not None and self.certificate is None:
            raise ConfigError("required when tls.private_key is given", "certificate")

    @property
    def enabled(self) -> bool:
        return self.certificate is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    passwd_file: Path  # Dovecot passwd-file format
    plaintext: PlaintextPolicy = "loopback"
    # Seconds before a failed login's -ERR (Dovecot's auth_failure_delay, default 2s).
    failure_delay: float = 2.0

    def __post_init__(self) -> None:
        check_fields(self, _AUTH_CHECKS)


@dataclass(frozen=True, slots=True, kw_only=True)
class MailConfig:
    location: str  # "maildir:/absolute/path/%u", Dovecot's mail_location syntax

    def __post_init__(self) -> None:
        check_fields(self, _MAIL_CHECKS)

    @property
    def maildir_template(self) -> str:
        """The absolute path with Dovecot's %u / %n still in it."""
        return self.location.removeprefix(MAILDIR_SCHEME)


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    max_connections: int = 10000
    max_connections_per_ip: int = 100
    # Consecutive -ERR replies before the session is closed (aiosmtpd's BOGUS_LIMIT).
    max_bad_commands: int = 20

    def __post_init__(self) -> None:
        check_fields(self, _LIMITS_CHECKS)


def _default_hostname() -> str:
    # Looked up through the module when a Config is made, so tests can replace getfqdn.
    return socket.getfqdn()


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    auth: AuthConfig
    mail: MailConfig
    hostname: str = field(default_factory=_default_hostname)
    idle_timeout: float = RFC1939_MIN_AUTOLOGOUT
    shutdown_timeout: float = 10.0
    listen: tuple[ListenConfig, ...] = field(default_factory=lambda: (ListenConfig(),))
    tls: TlsConfig = field(default_factory=TlsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log_level: LogLevel = "info"
    source: Path | None = None  # the file it came from

    def __post_init__(self) -> None:
        check_fields(self, _CONFIG_CHECKS)
        self._check_listeners()

    @property
    def idle_timeout_below_rfc_minimum(self) -> bool:
        """RFC 1939 section 3 asks for at least 10 minutes; the server warns below that."""
        return self.idle_timeout < RFC1939_MIN_AUTOLOGOUT

    def _check_listeners(self) -> None:
        if not isinstance(self.listen, tuple):
            raise expected("a tuple of ListenConfig", self.listen).within("listen")
        if not self.listen:
            raise ConfigError("at least one [[listen]] table is required", "listen")
        seen: dict[tuple[str, int], int] = {}
        for index, listener in enumerate(self.listen):
            key = f"listen[{index}]"
            if not isinstance(listener, ListenConfig):
                raise expected("a ListenConfig", listener).within(key)
            if listener.tls != "none" and not self.tls.enabled:
                raise ConfigError(
                    f"{listener.tls!r} requires tls.certificate and tls.private_key", key + ".tls"
                )
            address = (normal_address(listener.address), listener.port)
            # Port 0 gets a fresh free port for each listener: never a clash.
            if listener.port != 0 and address in seen:
                where = endpoint(listener.address, listener.port)
                raise ConfigError(f"duplicate of listen[{seen[address]}] ({where})", key)
            seen.setdefault(address, index)


_LISTEN_CHECKS: dict[str, Check] = {
    "address": listen_address,
    "port": int_range(0, 65535),
    "tls": one_of(TlsMode),
}
_TLS_CHECKS: dict[str, Check] = {
    "certificate": optional(readable_file),
    "private_key": optional(readable_file),
}
_AUTH_CHECKS: dict[str, Check] = {
    "passwd_file": readable_file,
    "plaintext": one_of(PlaintextPolicy),
    "failure_delay": seconds(positive=False),
}
_MAIL_CHECKS: dict[str, Check] = {"location": mail_location}
_LIMITS_CHECKS: dict[str, Check] = {
    "max_connections": int_range(1),
    "max_connections_per_ip": int_range(1),
    "max_bad_commands": int_range(1),
}
_CONFIG_CHECKS: dict[str, Check] = {
    "hostname": hostname,
    "idle_timeout": seconds(positive=True),
    "shutdown_timeout": seconds(positive=False),
    "tls": instance_of(TlsConfig),
    "auth": instance_of(AuthConfig),
    "mail": instance_of(MailConfig),
    "limits": instance_of(LimitsConfig),
    "log_level": one_of(LogLevel),
    "source": optional(instance_of(Path)),
}
