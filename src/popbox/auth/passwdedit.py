"""Editing a Dovecot passwd-file, behind `popbox user add|passwd|del`: atomic and lossless.

Every edit locks the file's directory, rewrites the whole file into a temporary file in the
same directory, fsyncs it and renames it over the old one, so the server (and Dovecot)
reads either the old file or the new one. Lines the edit does not touch stay byte for byte.

Names are written and matched in their canonical (RFC 8265) form, and passwords are hashed
in their RFC 8265 OpaqueString form, the form PasswdFileAuthenticator verifies.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from popbox.auth import schemes
from popbox.auth.passwdformat import (
    NoSuchUser,
    PasswdFileError,
    StrPath,
    UserExists,
    line_user,
)
from popbox.auth.precis import canonical_username, normalize_password
from popbox.durable import fsync_directory, replacing

__all__ = ["NEW_FILE_MODE", "add_user", "delete_user", "prepared_hash", "set_password"]

log = logging.getLogger(__name__)

# Mode of a passwd-file we create: it holds password hashes (Dovecot's docs advise 0600).
NEW_FILE_MODE = 0o600


def prepared_hash(password: str, scheme: str) -> str:
    """hash_password() of the OpaqueString form, the form logins verify (any user
    database stores secrets this way); ValueError names what is wrong."""
    # An empty password gets hash_password()'s own message.
    return schemes.hash_password(normalize_password(password) if password else "", scheme)


def add_user(path: StrPath, user: str, password: str, scheme: str = schemes.DEFAULT_SCHEME) -> None:
    """Append `user:{SCHEME}hash`; creates the file (mode 0600) if missing.

    Raises InvalidUsername, schemes.UnknownScheme, ValueError (empty password, or one RFC
    8265 disallows), UserExists or PasswdFileError; all carry a message for the admin.
    """
    user = canonical_username(user)
    line = f"{user}:{prepared_hash(password, scheme)}".encode()
    with _editing(path) as (real, lines):
        if _find(lines, user):
            raise UserExists(f"{real}: user {user} already exists")
        if lines[-1] == b"":
            lines[-1:] = [line, b""]
        else:  # no final newline: end the last line first
            lines.extend([line, b""])
        _replace(real, lines)


def set_password(
    path: StrPath, user: str, password: str, scheme: str = schemes.DEFAULT_SCHEME
) -> None:
    """Replace the password field of `user`'s line, keeping its other fields."""
    user = canonical_username(user)
    secret = prepared_hash(password, scheme).encode()
    with _editing(path, must_exist=True) as (real, lines):
        found = _find(lines, user)
        if not found:
            raise NoSuchUser(f"{real}: no user {user}")
        index = found[0]  # the line Dovecot (and we) read
        # Keep a CRLF line a CRLF line.
        cr = b"\r" if lines[index].endswith(b"\r") else b""
        fields = lines[index].removesuffix(b"\r").split(b":")
        lines[index] = b":".join([fields[0], secret, *fields[2:]]) + cr
        _replace(real, lines)


def delete_user(path: StrPath, user: str) -> None:
    """Remove every line of `user` (a later duplicate would otherwise take over)."""
    user = canonical_username(user)
    with _editing(path, must_exist=True) as (real, lines):
        found = set(_find(lines, user))
        if not found:
            raise NoSuchUser(f"{real}: no user {user}")
        _replace(real, [line for index, line in enumerate(lines) if index not in found])


def _find(lines: list[bytes], user: str) -> list[int]:
    """Indexes of the lines that belong to `user` (a canonical name)."""
    return [index for index, line in enumerate(lines) if line_user(line) == user]


@contextlib.contextmanager
def _editing(path: StrPath, must_exist: bool = False) -> Iterator[tuple[Path, list[bytes]]]:
    """Lock the file's directory and yield (real path, lines split at LF).

    Joining the lines with LF gives back the file byte for byte. The lock is an flock on
    the directory, because the atomic replace gives the file a new inode each time.
    """
    real = Path(os.path.realpath(path))
    try:
        dir_fd = os.open(real.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise PasswdFileError(f"{real.parent}: cannot open: {exc.strerror}") from exc
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        try:
            data = real.read_bytes()
        except FileNotFoundError as exc:
            if must_exist:
                raise PasswdFileError(f"{real}: no such file") from exc
            data = b""
        except OSError as exc:
            raise PasswdFileError(f"{real}: cannot read: {exc.strerror}") from exc
        yield real, data.split(b"\n")
    finally:
        os.close(dir_fd)  # also releases the flock


def _replace(real: Path, lines: list[bytes]) -> None:
    """Atomically write `lines` to `real`: temp file in the same directory, fsync, rename."""
    try:
        _write_atomic(real, b"\n".join(lines))
    except OSError as exc:
        raise PasswdFileError(f"{real}: cannot write: {exc.strerror}") from exc


def _write_atomic(real: Path, data: bytes) -> None:
    try:
        old: os.stat_result | None = os.stat(real)
    except FileNotFoundError:
        old = None
    mode = stat.S_IMODE(old.st_mode) if old else NEW_FILE_MODE
    prefix = f".{real.name}."
    with replacing(str(real), prefix=prefix, suffix=".tmp", mode=mode, durable=True) as handle:
        if old is not None:
            _keep_owner(real, handle.fileno(), old)
        handle.write(data)
    fsync_directory(str(real.parent))


def _keep_owner(real: Path, fd: int, old: os.stat_result) -> None:
    """Give the new file the old one's owner, so the server can still read it."""
    if (old.st_uid, old.st_gid) == (os.geteuid(), os.getegid()):
        return
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except PermissionError:
        # Not root: the edited file now belongs to us, as with any editor.
        log.warning("%s: cannot keep owner %d:%d", real, old.st_uid, old.st_gid)
