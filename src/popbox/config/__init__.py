"""TOML configuration -> frozen, validated dataclasses (shared/DESIGN.md, config.py).

Every dataclass checks its own fields on construction, so a Config that exists is a valid
one. The TOML layer on top only turns tables into keyword arguments: it refuses unknown and
missing keys, resolves relative paths against the config file's directory, and prefixes every
error with the file name and the dotted key path (`listen[1].port`), so an administrator
always learns which line to fix.
"""

from popbox.config.checks import ConfigError
from popbox.config.loading import load_config, parse_config
from popbox.config.model import (
    RFC1939_MIN_AUTOLOGOUT,
    AuthConfig,
    Config,
    LimitsConfig,
    ListenConfig,
    LogFormat,
    LogLevel,
    MailConfig,
    MetricsConfig,
    OAuthConfig,
    PlaintextPolicy,
    TlsConfig,
    TlsMode,
)
from popbox.config.ports import check_ports_free

__all__ = [
    "RFC1939_MIN_AUTOLOGOUT",
    "AuthConfig",
    "Config",
    "ConfigError",
    "LimitsConfig",
    "ListenConfig",
    "LogFormat",
    "LogLevel",
    "MailConfig",
    "MetricsConfig",
    "OAuthConfig",
    "PlaintextPolicy",
    "TlsConfig",
    "TlsMode",
    "check_ports_free",
    "load_config",
    "parse_config",
]
