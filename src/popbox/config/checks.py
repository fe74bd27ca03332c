"""Value checks for the config dataclasses, and the error that names the key.

Each check returns the value (normalized: ints become floats where seconds are expected) or
raises a ConfigError without a key; `check_fields` adds the field name, and the TOML layer
adds the table path and the file name, so the administrator reads
`config.toml: listen[1].port: expected an integer 0-65535, got 'abc'`.
"""

from __future__ import annotations

import grp
import ipaddress
import math
import os
import pwd
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeGuard, get_args

from popbox.db.url import check_database_url, is_database_url

# What may appear in the greeting and the APOP timestamp (RFC 1939 section 7): no spaces,
# CR/LF or angle brackets, which would break those lines. 253 octets: RFC 1035 section 2.3.4.
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9._:-]{1,253}")
# Dovecot's mail_location options (":INDEX=/path", ":LAYOUT=fs"): we take a plain path only.
_DOVECOT_OPTION_RE = re.compile(r":[A-Z_]+=")
MAILDIR_SCHEME = "maildir:"
MAIL_SCHEMES = ("maildir:", "mbox:")
# libpq's keyword form ("postgresql:dbname=mail") or a typo, not a URL: refused with a hint.
_DATABASE_PREFIXES = ("postgresql:", "postgres:")
_LOCATION_FORMS = "'maildir:<path>', 'mbox:<path>' or 'postgresql://...'"

Check = Callable[[object], object]


class ConfigError(Exception):
    """A configuration problem, shown as `source: key: message` (the parts that are known)."""

    def __init__(self, message: str, key: str | None = None, source: str | None = None) -> None:
        super().__init__(message, key, source)
        self.message = message
        self.key = key
        self.source = source

    def __str__(self) -> str:
        return ": ".join(part for part in (self.source, self.key, self.message) if part)

    def within(self, prefix: str | None = None, source: str | None = None) -> ConfigError:
        """The same error, its key placed under `prefix` and attributed to `source`."""
        key = self.key
        if prefix:
            key = prefix if not key else prefix + (key if key.startswith("[") else "." + key)
        return ConfigError(self.message, key, source or self.source)


def show(value: object) -> str:
    """A value as the administrator wrote it in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Path):
        return repr(str(value))
    return repr(value)


def expected(what: str, value: object) -> ConfigError:
    return ConfigError(f"expected {what}, got {show(value)}")


def _is_int(value: object) -> TypeGuard[int]:
    # TOML's true/false are Python bools, which are ints: never accept them as numbers.
    return isinstance(value, int) and not isinstance(value, bool)


def int_range(low: int, high: int | None = None) -> Check:
    what = f"an integer {low}-{high}" if high is not None else f"an integer >= {low}"

    def check(value: object) -> object:
        if _is_int(value) and low <= value and (high is None or value <= high):
            return value
        raise expected(what, value)

    return check


def seconds(*, positive: bool) -> Check:
    what = "a number of seconds > 0" if positive else "a number of seconds >= 0"

    def check(value: object) -> object:
        if _is_int(value) or isinstance(value, float):
            number = float(value)
            if math.isfinite(number) and (number > 0 if positive else number >= 0):
                return number
        raise expected(what, value)

    return check


def one_of(literal: Any) -> Check:
    """The values of a Literal[...] type."""
    choices: tuple[str, ...] = get_args(literal)
    what = "one of " + ", ".join(repr(choice) for choice in choices)

    def check(value: object) -> object:
        if isinstance(value, str) and value in choices:
            return value
        raise expected(what, value)

    return check


def instance_of(cls: type) -> Check:
    def check(value: object) -> object:
        if isinstance(value, cls):
            return value
        raise expected(f"a {cls.__name__}", value)

    return check


def optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def hostname(value: object) -> object:
    if isinstance(value, str) and _HOSTNAME_RE.fullmatch(value):
        return value
    raise expected("a host name (letters, digits, '.', '-', '_')", value)


def listen_address(value: object) -> object:
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise expected("an IP address or host name", value)
    if value.startswith("["):
        raise expected("an IP address without brackets (::1, not [::1])", value)
    return value


def readable_file(value: object) -> object:
    if not isinstance(value, Path):
        raise expected("a file path", value)
    if not value.exists():
        raise ConfigError(f"file not found: {value}")
    if not value.is_file():
        raise ConfigError(f"not a regular file: {value}")
    if not os.access(value, os.R_OK):
        raise ConfigError(f"file is not readable: {value}")
    return value


def location_parts(location: object) -> tuple[str, str]:
    """(scheme, path) of a `maildir:<path>` or `mbox:<path>` mail location (Dovecot's
    mail_location syntax)."""
    if not isinstance(location, str):
        raise expected(_LOCATION_FORMS, location)
    scheme = next((s for s in MAIL_SCHEMES if location.startswith(s)), None)
    path = location.removeprefix(scheme) if scheme else ""
    if scheme is None or not path:
        raise expected(_LOCATION_FORMS, location)
    _check_location_path(location, path)
    return scheme, path


def split_location(location: object) -> str:
    """The path part of a mail location."""
    return location_parts(location)[1]


def _check_location_path(location: str, path: str) -> None:
    if path.startswith("~"):
        raise ConfigError(
            f"'~' (a home directory) is not supported; use a path with %u, got {location!r}"
        )
    if _DOVECOT_OPTION_RE.search(path):
        raise ConfigError(f"Dovecot-style ':KEY=value' options are not supported, got {location!r}")


def _has_user_variable(template: str) -> bool:
    """True if `template` uses Dovecot's %u (user) or %n (user part); %% is a literal %."""
    index = template.find("%")
    while index != -1:
        if template[index + 1 : index + 2] in ("u", "n"):
            return True
        index = template.find("%", index + 2)
    return False


def database_url(value: object) -> object:
    """A PostgreSQL URL (postgresql://user:password@host:port/dbname?...); the error never
    shows a password."""
    try:
        return check_database_url(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def names_database(location: object) -> bool:
    """A `postgresql://` location, or one meant to be (checked by database_url)."""
    return is_database_url(location) or (
        isinstance(location, str) and location.startswith(_DATABASE_PREFIXES)
    )


def mail_location(value: object) -> object:
    if names_database(value):
        return database_url(value)
    scheme, path = location_parts(value)
    kind = scheme.rstrip(":")
    if not os.path.isabs(path):
        raise ConfigError(f"the {kind} path must be absolute, got {value!r}")
    if not _has_user_variable(path):
        raise ConfigError(f"the {kind} path must contain %u or %n (the user), got {value!r}")
    return value


def check_fields(obj: object, checks: Mapping[str, Check]) -> None:
    """Run each field's check on a frozen dataclass, store the normalized value, and name
    the field in any error."""
    for name, check in checks.items():
        try:
            value = check(getattr(obj, name))
        except ConfigError as error:
            raise error.within(name) from None
        object.__setattr__(obj, name, value)


def normal_address(address: str) -> str:
    """One spelling per address, so `::1` and `0::1` count as the same listener."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address.lower()


def endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def non_empty_string(value: object) -> object:
    if isinstance(value, str) and value:
        return value
    raise expected("a non-empty string", value)


def mechanism_names(value: object) -> object:
    """A list of SASL mechanism names popbox implements (RFC 5034)."""
    from popbox.sasl.registry import MECHANISMS  # noqa: PLC0415

    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise expected("a list of SASL mechanism names", value)
    names = tuple(v.upper() for v in value)
    for name in names:
        if name not in MECHANISMS:
            raise expected("one of " + ", ".join(MECHANISMS), name)
    return names


def expire_policy(value: object) -> object:
    """RFC 2449 section 6.7: "never" or a number of days (0: removed at the UPDATE after
    the first retrieval)."""
    if value == "never" or (_is_int(value) and value >= 0):
        return value
    raise expected('"never" or a number of days >= 0', value)


def system_user(value: object) -> object:
    """A user name in the system's passwd database (getpwnam, as setuid will need)."""
    return _system_name(value, "user", pwd.getpwnam)


def system_group(value: object) -> object:
    """A group name in the system's group database (getgrnam)."""
    return _system_name(value, "group", grp.getgrnam)


def _system_name(value: object, what: str, lookup: Callable[[str], object]) -> object:
    if not isinstance(value, str) or not value:
        raise expected(f"a {what} name", value)
    try:
        lookup(value)
    except KeyError:
        raise ConfigError(f"no such {what}: {value!r}") from None
    return value


def networks(value: object) -> object:
    """A non-empty array of IP networks in CIDR notation, normalised ("::1/128")."""
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise expected('an array of networks such as ["127.0.0.1/32", "::1/128"]', value)
    if not value:
        raise ConfigError("must name at least one network")
    normal = []
    for index, item in enumerate(value):
        try:
            normal.append(str(ipaddress.ip_network(item, strict=True)))
        except ValueError as error:
            raise ConfigError(f"not a network in CIDR notation: {error}").within(
                f"[{index}]"
            ) from None
    return tuple(normal)


def tuple_of(check: Check) -> Check:
    def checked(value: object) -> object:
        if not isinstance(value, tuple):
            raise expected("an array", value)
        return tuple(check(item) for item in value)

    return checked
