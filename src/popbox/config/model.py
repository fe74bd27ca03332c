"""The configuration as frozen dataclasses, each validated on construction."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from popbox.config.checks import (
    Check,
    ConfigError,
    check_fields,
    database_url,
    endpoint,
    expected,
    expire_policy,
    hostname,
    instance_of,
    int_range,
    listen_address,
    mail_location,
    mechanism_names,
    networks,
    non_empty_string,
    normal_address,
    one_of,
    optional,
    readable_file,
    seconds,
    system_group,
    system_user,
    tuple_of,
)
from popbox.db.url import is_database_url

TlsMode = Literal["none", "starttls", "implicit"]
TlsVersion = Literal["TLSv1.2", "TLSv1.3"]
MboxFormat = Literal["mboxo", "mboxrd"]
UidlFormat = Literal["popbox", "dovecot", "courier"]
# Dovecot's pop3_client_workarounds that popbox implements.
ClientWorkaround = Literal["outlook-no-nuls", "oe-ns-eoh"]
PlaintextPolicy = Literal["never", "loopback", "always"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

# RFC 1939 section 3: "the autologout timer MUST be of at least 10 minutes' duration".
RFC1939_MIN_AUTOLOGOUT = 600.0

# Worker processes at most: far beyond any machine's useful count, a typo's guard.
MAX_WORKERS = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenConfig:
    address: str = "127.0.0.1"  # an IP literal or a host name
    port: int = 1110  # 0 = any free port (tests)
    tls: TlsMode = "none"
    # HAProxy's PROXY protocol (v1 and v2): each connection starts with a header naming
    # the real client; only peers in trusted_proxies (CIDR networks) may send one.
    proxy_protocol: bool = False
    trusted_proxies: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_fields(self, _LISTEN_CHECKS)
        if self.proxy_protocol and self.trusted_proxies is None:
            raise ConfigError(
                "required when proxy_protocol = true (the proxies allowed to name clients)",
                "trusted_proxies",
            )
        if not self.proxy_protocol and self.trusted_proxies is not None:
            raise ConfigError("only used with proxy_protocol = true", "trusted_proxies")


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    certificate: Path | None = None
    private_key: Path | None = None
    # RFC 8996 retired TLS 1.0 and 1.1; RFC 8314 section 4.1 asks for TLS 1.2 or later.
    min_version: TlsVersion = "TLSv1.2"

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
class OAuthConfig:
    """[auth.oauth]: bearer tokens (RFC 7628) are JWTs signed by this issuer."""

    issuer: str
    audience: str
    username_claim: str = "email"
    jwks_file: Path | None = None
    public_key: Path | None = None

    def __post_init__(self) -> None:
        check_fields(self, _OAUTH_CHECKS)
        if (self.jwks_file is None) == (self.public_key is None):
            raise ConfigError("give exactly one of jwks_file and public_key", "jwks_file")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    # Where users are: a Dovecot passwd-file, or the users table of a PostgreSQL database
    # (postgresql://...); exactly one of the two.
    passwd_file: Path | None = None
    database: str | None = None
    plaintext: PlaintextPolicy = "loopback"
    # SASL mechanisms offered (RFC 5034); None: every one that can work here.
    mechanisms: tuple[str, ...] | None = None
    # Seconds before a failed login's -ERR (Dovecot's auth_failure_delay, default 2s),
    # doubled for each recent failure from the same address up to failure_delay_max.
    failure_delay: float = 2.0
    failure_delay_max: float = 15.0
    # More than max_failures failures within failure_window seconds, from one address or
    # for one user, block that address or user for block_time seconds.
    max_failures: int = 10
    failure_window: float = 600.0
    block_time: float = 600.0
    # RFC 2449 section 6.5 LOGIN-DELAY: minimum seconds between one user's logins.
    login_delay: int | None = None
    oauth: OAuthConfig | None = None

    def __post_init__(self) -> None:
        check_fields(self, _AUTH_CHECKS)
        if self.passwd_file is None and self.database is None:
            raise ConfigError("required key is missing (or give auth.database)", "passwd_file")
        if self.passwd_file is not None and self.database is not None:
            raise ConfigError("give passwd_file or database, not both", "database")
        if self.failure_delay_max < self.failure_delay:
            raise ConfigError("must not be below auth.failure_delay", "failure_delay_max")
        oauth_named = {"OAUTHBEARER", "XOAUTH2"} & set(self.mechanisms or ())
        if oauth_named and self.oauth is None:
            raise ConfigError(f"{sorted(oauth_named)[0]} needs an [auth.oauth] table", "mechanisms")


@dataclass(frozen=True, slots=True, kw_only=True)
class MailConfig:
    # "maildir:/absolute/path/%u" or "mbox:/var/mail/%u", Dovecot's mail_location syntax,
    # or "postgresql://user:password@host/dbname" (the password is never logged).
    location: str
    # RFC 2449 section 6.7 EXPIRE: messages first retrieved more than this many days ago
    # are removed at the next UPDATE (0: every retrieved message, as if DELE'd); "never"
    # announces EXPIRE NEVER; unset announces nothing and removes nothing.
    expire_days: int | str | None = None
    uidl_format: UidlFormat = "popbox"  # or the UIDLs Dovecot / Courier served (Maildir)
    xuidl: bool = False  # an X-UIDL: header in the message wins
    mbox_format: MboxFormat = "mboxo"  # "mboxrd" undoes >From quoting
    dotlock_stale: float = 300.0  # seconds after which a <mbox>.lock is taken over
    lock_timeout: float = 30.0  # how long delivery waits for an mbox lock

    def __post_init__(self) -> None:
        check_fields(self, _MAIL_CHECKS)

    @property
    def scheme(self) -> str:
        """ "maildir", "mbox" or "postgresql"."""
        if is_database_url(self.location):
            return "postgresql"
        return self.location.split(":", 1)[0]

    @property
    def path_template(self) -> str:
        """The absolute path with Dovecot's %u / %n still in it."""
        return self.location.split(":", 1)[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class LmtpConfig:
    """[lmtp]: the LMTP listener (RFC 2033) that delivers into the mail store."""

    address: str | None = None
    port: int | None = None
    path: Path | None = None  # a unix socket instead of address/port
    max_message_size: int = 50 * 1024 * 1024

    def __post_init__(self) -> None:
        check_fields(self, _LMTP_CHECKS)
        if (self.path is None) == (self.port is None):
            raise ConfigError("give either port (with address) or path", "port")


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    max_connections: int = 10000
    max_connections_per_ip: int = 100
    # Consecutive -ERR replies before the session is closed (aiosmtpd's BOGUS_LIMIT).
    max_bad_commands: int = 10
    # Seconds before each reply to a bad command past half of max_bad_commands in a row
    # (Postfix's smtpd_error_sleep_time past smtpd_soft_error_limit); 0: none.
    bad_command_delay: float = 1.0

    def __post_init__(self) -> None:
        check_fields(self, _LIMITS_CHECKS)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """[metrics]: Prometheus metrics over HTTP (README: Metrics)."""

    address: str = "127.0.0.1"
    port: int = 9110  # 0 = any free port (tests)

    def __post_init__(self) -> None:
        check_fields(self, _METRICS_CHECKS)


def _default_hostname() -> str:
    # Looked up through the module when a Config is made, so tests can replace getfqdn.
    return socket.getfqdn()


def _default_workers() -> int:
    """The CPUs this process may run on (os.process_cpu_count() from Python 3.13)."""
    count = getattr(os, "process_cpu_count", None)
    if count is not None:
        return max(1, min(MAX_WORKERS, int(count() or 1)))
    try:
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    except AttributeError:  # no sched_getaffinity (not Linux)
        return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    auth: AuthConfig
    mail: MailConfig
    hostname: str = field(default_factory=_default_hostname)
    idle_timeout: float = RFC1939_MIN_AUTOLOGOUT
    # SIGTERM: seconds running sessions get to finish before they are closed without UPDATE.
    shutdown_timeout: float = 10.0
    # Processes serving connections on the shared listening sockets; 1: no supervisor.
    workers: int = field(default_factory=_default_workers)
    # Started as root: after binding, run as this user and group (default: its own group).
    user: str | None = None
    group: str | None = None
    listen: tuple[ListenConfig, ...] = field(default_factory=lambda: (ListenConfig(),))
    tls: TlsConfig = field(default_factory=TlsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    lmtp: LmtpConfig | None = None
    metrics: MetricsConfig | None = None  # absent: no metrics endpoint
    client_workarounds: tuple[ClientWorkaround, ...] = ()
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    source: Path | None = None  # the file it came from

    def __post_init__(self) -> None:
        check_fields(self, _CONFIG_CHECKS)
        if self.group is not None and self.user is None:
            raise ConfigError("needs user (the user to run as)", "group")
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
    "proxy_protocol": instance_of(bool),
    "trusted_proxies": optional(networks),
}
_TLS_CHECKS: dict[str, Check] = {
    "certificate": optional(readable_file),
    "private_key": optional(readable_file),
    "min_version": one_of(TlsVersion),
}
_OAUTH_CHECKS: dict[str, Check] = {
    "issuer": non_empty_string,
    "audience": non_empty_string,
    "username_claim": non_empty_string,
    "jwks_file": optional(readable_file),
    "public_key": optional(readable_file),
}
_AUTH_CHECKS: dict[str, Check] = {
    "passwd_file": optional(readable_file),
    "database": optional(database_url),
    "plaintext": one_of(PlaintextPolicy),
    "mechanisms": optional(mechanism_names),
    "failure_delay": seconds(positive=False),
    "failure_delay_max": seconds(positive=False),
    "max_failures": int_range(1),
    "failure_window": seconds(positive=True),
    "block_time": seconds(positive=False),
    "login_delay": optional(int_range(0)),
    "oauth": optional(instance_of(OAuthConfig)),
}
_MAIL_CHECKS: dict[str, Check] = {
    "location": mail_location,
    "expire_days": optional(expire_policy),
    "uidl_format": one_of(UidlFormat),
    "xuidl": instance_of(bool),
    "mbox_format": one_of(MboxFormat),
    "dotlock_stale": seconds(positive=True),
    "lock_timeout": seconds(positive=False),
}
_LMTP_CHECKS: dict[str, Check] = {
    "address": optional(listen_address),
    "port": optional(int_range(0, 65535)),
    "path": optional(instance_of(Path)),
    "max_message_size": int_range(1),
}
_METRICS_CHECKS: dict[str, Check] = {
    "address": listen_address,
    "port": int_range(0, 65535),
}
_LIMITS_CHECKS: dict[str, Check] = {
    "max_connections": int_range(1),
    "max_connections_per_ip": int_range(1),
    "max_bad_commands": int_range(1),
    "bad_command_delay": seconds(positive=False),
}
_CONFIG_CHECKS: dict[str, Check] = {
    "hostname": hostname,
    "idle_timeout": seconds(positive=True),
    "shutdown_timeout": seconds(positive=False),
    "workers": int_range(1, MAX_WORKERS),
    "user": optional(system_user),
    "group": optional(system_group),
    "tls": instance_of(TlsConfig),
    "auth": instance_of(AuthConfig),
    "mail": instance_of(MailConfig),
    "limits": instance_of(LimitsConfig),
    "lmtp": optional(instance_of(LmtpConfig)),
    "metrics": optional(instance_of(MetricsConfig)),
    "client_workarounds": tuple_of(one_of(ClientWorkaround)),
    "log_level": one_of(LogLevel),
    "log_format": one_of(LogFormat),
    "source": optional(instance_of(Path)),
}
