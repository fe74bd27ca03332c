"""TOML -> the config dataclasses: unknown and missing keys, relative paths, key paths."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from popbox.config.checks import ConfigError, expected, location_parts, names_database
from popbox.config.model import (
    AuthConfig,
    Config,
    LimitsConfig,
    ListenConfig,
    LmtpConfig,
    MailConfig,
    MetricsConfig,
    OAuthConfig,
    TlsConfig,
)

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")  # TOML's bare keys; others are shown quoted

# Turns one TOML value into a dataclass argument, given the config file's directory. Fields
# without one pass through unchanged, and the dataclass checks them.
_Converter = Callable[[object, Path], object]


def _as_is(value: object, base_dir: Path) -> object:
    return value


def _relative_path(value: object, base_dir: Path) -> object:
    if not isinstance(value, str) or not value:
        raise expected("a file path", value)
    return base_dir / value


def _as_tuple(value: object, base_dir: Path) -> object:
    return tuple(value) if isinstance(value, list) else value


def _relative_location(value: object, base_dir: Path) -> object:
    if names_database(value):
        return value  # a URL, not a path: MailConfig checks it
    scheme, path = location_parts(value)
    return scheme + os.path.join(base_dir, path)


def _check_keys(cls: Any, table: Mapping[str, object], allowed: list[str]) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            name = key if _BARE_KEY_RE.fullmatch(key) else repr(key)
            raise ConfigError("unknown key" + hint, name)
    for spec in dataclasses.fields(cls):
        required = spec.default is dataclasses.MISSING
        required = required and spec.default_factory is dataclasses.MISSING
        if required and spec.name in allowed and spec.name not in table:
            raise ConfigError("required key is missing", spec.name)


def _build(
    cls: Any,
    table: object,
    base_dir: Path,
    converters: Mapping[str, _Converter],
    extra: Mapping[str, object] | None = None,
) -> Any:
    """One dataclass from one TOML table, plus `extra` arguments that TOML may not set.

    Errors carry keys relative to the table; the caller prefixes its own.
    """
    extra = extra or {}
    if not isinstance(table, Mapping):
        raise expected("a table", table)
    allowed = [spec.name for spec in dataclasses.fields(cls) if spec.name not in extra]
    _check_keys(cls, table, allowed)
    arguments = dict(extra)
    for name, value in table.items():
        try:
            arguments[name] = converters.get(name, _as_is)(value, base_dir)
        except ConfigError as error:
            raise error.within(name) from None
    return cls(**arguments)


def _table(cls: Any, converters: Mapping[str, _Converter]) -> _Converter:
    return lambda value, base_dir: _build(cls, value, base_dir, converters)


_LISTEN_CONVERTERS: dict[str, _Converter] = {"trusted_proxies": _as_tuple}


def _listeners(value: object, base_dir: Path) -> object:
    if not isinstance(value, list):
        raise expected("an array of tables ([[listen]])", value)
    listeners = []
    for index, entry in enumerate(value):
        try:
            listeners.append(_build(ListenConfig, entry, base_dir, _LISTEN_CONVERTERS))
        except ConfigError as error:
            raise error.within(f"[{index}]") from None
    return tuple(listeners)


_CONFIG_CONVERTERS: dict[str, _Converter] = {
    "listen": _listeners,
    "tls": _table(TlsConfig, {"certificate": _relative_path, "private_key": _relative_path}),
    "auth": _table(
        AuthConfig,
        {
            "passwd_file": _relative_path,
            "mechanisms": _as_tuple,
            "oauth": _table(
                OAuthConfig, {"jwks_file": _relative_path, "public_key": _relative_path}
            ),
        },
    ),
    "mail": _table(MailConfig, {"location": _relative_location}),
    "limits": _table(LimitsConfig, {}),
    "lmtp": _table(LmtpConfig, {"path": _relative_path}),
    "metrics": _table(MetricsConfig, {}),
    "client_workarounds": _as_tuple,
}


def parse_config(
    data: Mapping[str, Any],
    *,
    base_dir: Path,
    source_name: str,
    source: Path | None = None,
) -> Config:
    """A Config from parsed TOML; relative paths are taken from `base_dir`.

    `source_name` starts every error message; `source` becomes Config.source.
    """
    try:
        config: Config = _build(
            Config, data, base_dir.absolute(), _CONFIG_CONVERTERS, {"source": source}
        )
    except ConfigError as error:
        raise error.within(source=source_name) from None
    return config


def load_config(path: Path) -> Config:
    """Read and validate a TOML config file; every problem is a ConfigError."""
    name = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("config file not found", source=name) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", source=name) from None
    except OSError as error:
        raise ConfigError(f"cannot read: {error.strerror}", source=name) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))  # TOML files are UTF-8 (TOML 1.0 spec)
    except UnicodeDecodeError as error:
        raise ConfigError(f"not UTF-8 (byte {error.start})", source=name) from None
    except tomllib.TOMLDecodeError as error:
        # tomllib's message ends with "(at line N, column M)".
        raise ConfigError(f"TOML syntax error: {error}", source=name) from None
    return parse_config(data, base_dir=path.absolute().parent, source_name=name, source=path)
