"""Delivering one message into a Maildir (cr.yp.to/proto/maildir.html), as Dovecot does.

The spec's recipe, which makes a message visible whole or not at all and needs no lock:
create a file with a unique name in tmp/, write and fsync it, then link it into new/ under
the same name. A POP3 session that holds the maildrop lock keeps its snapshot; the new
message shows in the next one.

The name is Dovecot's: `<seconds>.M<usec>P<pid>Q<counter>.<host>,S=<size>,W=<wire size>`.
S= is the size as stored, W= the size with CRLF line ends (storage/octets.py), which the
listing (maildir_listing.py) then takes from the name without opening the file.

Everything here is blocking file-system work: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import socket
import threading
import time

from popbox.durable import fsync_directory
from popbox.storage.base import StoreError
from popbox.storage.maildir_listing import ALL_SUBDIRS
from popbox.storage.octets import wire_octets

__all__ = ["deliver_to_maildir", "local_hostname", "maildir_hostname"]

logger = logging.getLogger(__name__)

# A maildrop we create is private to its owner, and so is each message (Dovecot's defaults).
_MAILDIR_MODE = 0o700
_MESSAGE_MODE = 0o600

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW

# Maildir spec: "replace / with \057 and : with \072" in the host name. "," is escaped too
# (\054): it separates Dovecot's ,S= and ,W= fields, which a host name must not fake.
_HOSTNAME_ESCAPES = str.maketrans({"/": "\\057", ":": "\\072", ",": "\\054"})

# Names tried before giving up when one is taken (another agent with our pid and clock).
_NAME_ATTEMPTS = 10

# Errors of link(2) that mean "this file system has no hard links": fall back to rename(2).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})

# The Q<counter> part: unique among deliveries of this process within one microsecond.
_counter = itertools.count(1)
_counter_lock = threading.Lock()


def maildir_hostname(hostname: str) -> str:
    """`hostname` made safe for a Maildir file name (Maildir spec, "host" part)."""
    if not hostname or "\0" in hostname:
        raise ValueError("a Maildir host name must be non-empty and without NUL")
    return hostname.translate(_HOSTNAME_ESCAPES)


@functools.cache
def local_hostname() -> str:
    """This machine's name as qmail, Postfix and Dovecot put it in Maildir names."""
    return socket.gethostname() or "localhost"


def _unique_name(host: str, size: int, wire_size: int) -> str:
    with _counter_lock:
        counter = next(_counter)
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    usec = nanoseconds // 1000
    return f"{seconds}.M{usec}P{os.getpid()}Q{counter}.{host},S={size},W={wire_size}"


def _create_maildir(maildir: str) -> None:
    """Create the maildir and new/ cur/ tmp/ if missing (first mail for a user)."""
    os.makedirs(maildir, _MAILDIR_MODE, exist_ok=True)
    for sub in ALL_SUBDIRS:
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.join(maildir, sub), _MAILDIR_MODE)


def _create_in_tmp(tmp_dir: str, host: str, sizes: tuple[int, int]) -> tuple[str, int]:
    """Open a new, uniquely named file in tmp/; retry when a name is taken."""
    for _ in range(_NAME_ATTEMPTS):
        name = _unique_name(host, *sizes)
        try:
            return name, os.open(os.path.join(tmp_dir, name), _CREATE_FLAGS, _MESSAGE_MODE)
        except FileExistsError:
            continue
    raise StoreError(f"no unused file name in {tmp_dir!r} after {_NAME_ATTEMPTS} attempts")


def _write_and_sync(fd: int, message: bytes) -> None:
    """Write all of `message` and fsync it; closes `fd`."""
    try:
        view = memoryview(message)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_to_new(tmp_path: str, new_path: str) -> None:
    """tmp/ -> new/ without replacing anything: link(2), or rename(2) where links are not
    supported. A name already in new/ raises FileExistsError."""
    try:
        os.link(tmp_path, new_path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(new_path):
            raise FileExistsError(errno.EEXIST, "exists", new_path) from exc
        os.rename(tmp_path, new_path)
        return
    try:
        os.unlink(tmp_path)
    except OSError as exc:
        # The message is delivered; only a stray copy is left in tmp/.
        logger.warning("cannot remove %r after delivery: %s", tmp_path, exc)


def _link_into_new(tmp_path: str, new_dir: str, host: str, sizes: tuple[int, int]) -> str:
    """Give the message in tmp/ its name in new/ (the tmp/ name, or a fresh one if that is
    taken there) and return that name."""
    name = os.path.basename(tmp_path)
    for _ in range(_NAME_ATTEMPTS):
        try:
            _move_to_new(tmp_path, os.path.join(new_dir, name))
        except FileExistsError:
            name = _unique_name(host, *sizes)
            continue
        return name
    raise StoreError(f"no unused file name in {new_dir!r} after {_NAME_ATTEMPTS} attempts")


def deliver_to_maildir(maildir: str, message: bytes, *, hostname: str) -> str:
    """Deliver `message` (stored as given) into `maildir`; return its file name in new/.

    Creates the maildir (new/ cur/ tmp/, mode 0700) if it is missing. The message is in
    new/ whole, fsync'd with its directory entry, or not at all: on any failure the file
    is removed and StoreError is raised.
    """
    host = maildir_hostname(hostname)
    sizes = (len(message), wire_octets(message))
    tmp_dir = os.path.join(maildir, "tmp")
    new_dir = os.path.join(maildir, "new")
    try:
        _create_maildir(maildir)
        name, fd = _create_in_tmp(tmp_dir, host, sizes)
    except OSError as exc:
        raise StoreError(f"cannot deliver into {maildir!r}: {exc}") from exc
    tmp_path = os.path.join(tmp_dir, name)
    try:
        _write_and_sync(fd, message)
        name = _link_into_new(tmp_path, new_dir, host, sizes)
    except OSError as exc:
        _remove_quietly(tmp_path)
        raise StoreError(f"cannot deliver into {maildir!r}: {exc}") from exc
    except BaseException:
        _remove_quietly(tmp_path)
        raise
    try:
        fsync_directory(new_dir)
    except OSError as exc:
        # Visible but maybe not durable: take it back, so that the sender retries rather
        # than trusting a delivery that a crash could undo.
        _remove_quietly(os.path.join(new_dir, name))
        raise StoreError(f"cannot sync {new_dir!r}: {exc}") from exc
    return name


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.error("cannot remove %r after a failed delivery: %s", path, exc)
