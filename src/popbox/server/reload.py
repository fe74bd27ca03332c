"""SIGHUP: re-read the config file and keep what cannot change while the server runs.

What changes live (server/app.py apply_config): the session policy (hostname, idle_timeout,
[limits], [auth] plaintext, mechanisms, delays and blocking, login_delay,
client_workarounds), the users file (re-read; a new passwd_file or [auth.oauth] is used),
the TLS files and min_version, log_level, shutdown_timeout. What needs a restart: sockets
are bound and root given up once (listen, lmtp, user, group), workers start once, and
open maildrops hold the store ([mail]); so does switching TLS on or off. Those keys keep
their running values and a warning names them. A file that does not load is logged and
the running configuration kept: the server stays up.
"""

from __future__ import annotations

import dataclasses
import logging

from popbox.config import Config, ConfigError, load_config

log = logging.getLogger("popbox.server")

RESTART_KEYS = ("listen", "lmtp", "user", "group", "workers", "mail")


def changed_keys(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ (`limits.max_connections`), in field order;
    nested tables are compared field by field, anything else as a whole."""
    if not dataclasses.is_dataclass(old) or type(old) is not type(new):
        return [prefix] if old != new else []
    changed: list[str] = []
    for spec in dataclasses.fields(old):
        if spec.name == "source":
            continue
        name = f"{prefix}.{spec.name}" if prefix else spec.name
        before, after = getattr(old, spec.name), getattr(new, spec.name)
        if dataclasses.is_dataclass(before) and dataclasses.is_dataclass(after):
            changed += changed_keys(before, after, name)
        elif before != after:
            changed.append(name)
    return changed


def reload_config(current: Config) -> Config:
    """The configuration to run with after SIGHUP: the file's, except keys that need a
    restart, which keep their running values. Logs what changed and what was kept."""
    if current.source is None:
        log.info("reload: no config file (the demo setup); re-reading users and TLS files")
        return current
    try:
        loaded = load_config(current.source)
    except ConfigError as error:
        log.error("reload failed, keeping the running configuration: %s", error)
        return current
    changes = changed_keys(current, loaded)
    kept = {name: getattr(current, name) for name in RESTART_KEYS}
    if current.tls.enabled != loaded.tls.enabled:
        kept["tls"] = current.tls  # the listeners' TLS modes were set up at start
    pending = [key for key in changes if key.split(".")[0] in kept]
    applied = [key for key in changes if key not in pending]
    try:
        config = dataclasses.replace(loaded, **kept)
    except ConfigError as error:  # pragma: no cover - kept keys were valid together
        log.error("reload failed, keeping the running configuration: %s", error)
        return current
    log.info("reload: %s", "applied " + ", ".join(applied) if applied else "no key changed")
    if pending:
        log.warning("reload: changed but not applied until a restart: %s", ", ".join(pending))
    return config
