"""Running as `user`/`group` after binding: started as root for ports 110 and 995, popbox
binds first, then gives root up for good (supplementary groups, group, user, in that order:
setuid first would leave no right to change the groups), before any worker starts or any
file is written. Maildrops, caches and delivered mail are then written as that user."""

from __future__ import annotations

import grp
import logging
import os
import pwd
from collections.abc import Sequence
from dataclasses import dataclass

from popbox.config import Config, ConfigError
from popbox.db.startup import preload_databases

log = logging.getLogger("popbox.server")


@dataclass(frozen=True, slots=True)
class RunAs:
    user: str
    uid: int
    group: str
    gid: int


def resolve(config: Config) -> RunAs | None:
    """The user and group named by the config (group: the user's own by default)."""
    if config.user is None:
        return None
    source = str(config.source) if config.source is not None else None
    try:
        entry = pwd.getpwnam(config.user)
    except KeyError:
        raise ConfigError(f"no such user: {config.user!r}", "user", source) from None
    try:
        group = grp.getgrnam(config.group) if config.group else grp.getgrgid(entry.pw_gid)
    except KeyError:
        raise ConfigError(f"no such group: {config.group!r}", "group", source) from None
    return RunAs(entry.pw_name, entry.pw_uid, group.gr_name, group.gr_gid)


def drop_privileges(config: Config, owned_paths: Sequence[str] = ()) -> None:
    """Become `user`/`group`, giving them `owned_paths` (the LMTP unix socket) first.

    Without `user`, root stays root with a warning. Not root: nothing to do if already
    that user, else a ConfigError naming `user` (only root can switch).
    """
    target = resolve(config)
    if target is None or target.uid == 0:
        if os.geteuid() == 0:
            log.warning(
                "running as root: set user (and group) in the config to give root up after binding"
            )
        return
    if os.geteuid() != 0:
        if (os.geteuid(), os.getegid()) == (target.uid, target.gid):
            return
        source = str(config.source) if config.source is not None else None
        message = f"switching to user {target.user!r} needs root (running as uid {os.geteuid()})"
        raise ConfigError(message, "user", source)
    for path in owned_paths:
        os.chown(path, target.uid, target.gid)
    os.initgroups(target.user, target.gid)  # the user's supplementary groups, and gid
    os.setgid(target.gid)
    os.setuid(target.uid)  # as root: real, effective and saved uid; no way back
    log.info(
        "running as user=%s (uid %d) group=%s (gid %d)",
        target.user,
        target.uid,
        target.group,
        target.gid,
    )


def become_user_to_deliver(config: Config) -> None:
    """`popbox deliver` started as root: become `user`/`group` before anything is stored,
    so that the mail and the maildrops it creates belong to the user `popbox serve` runs
    as (dovecot-lda switches users too). Started as any other user (an MTA's pipe
    transport runs it as the user its configuration names), it stays that user.

    What delivery imports on first use is imported first, as `popbox serve` does: the
    user may not be able to read Python's files."""
    if os.geteuid() != 0:
        return
    import concurrent.futures.thread  # noqa: F401, PLC0415 - asyncio.to_thread's pool

    preload_databases(config)
    drop_privileges(config)
