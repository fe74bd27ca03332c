"""Users in a Dovecot passwd-file: reading, authenticating, and `popbox user ...` edits.

The line format and name canonicalisation are in passwdformat.py, the edits in
passwdedit.py; both are re-exported here. A user listed twice keeps its first line (as
Dovecot's db-passwd-file.c).

PasswdFileAuthenticator finds users in the file; verifying their secrets (RFC 8265 name
and password preparation, every mechanism, bearer tokens only for users the file lists)
is shared with the other user databases in auth/userdb.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading

from popbox.auth.base import parse_user_settings
from popbox.auth.oauth import BearerVerifier
from popbox.auth.passwdedit import NEW_FILE_MODE, add_user, delete_user, set_password
from popbox.auth.passwdformat import (
    PASSWD_FILE_DEFAULT_SCHEME,
    NoSuchUser,
    PasswdEntry,
    PasswdFileError,
    StrPath,
    UserExists,
    parse_line,
)
from popbox.auth.precis import canonical_username
from popbox.auth.userdb import UserDatabaseAuthenticator, UserRecord
from popbox.auth.usernames import InvalidUsername

__all__ = [
    "NEW_FILE_MODE",
    "PASSWD_FILE_DEFAULT_SCHEME",
    "NoSuchUser",
    "PasswdEntry",
    "PasswdFile",
    "PasswdFileAuthenticator",
    "PasswdFileError",
    "UserExists",
    "add_user",
    "delete_user",
    "list_users",
    "parse_line",
    "parse_passwd_file",
    "set_password",
]

log = logging.getLogger(__name__)


def parse_passwd_file(data: bytes, path: str = "passwd-file") -> dict[str, PasswdEntry]:
    """All usable entries by canonical user name, in file order; a user's first line wins.

    An entry's `user` is its canonical (RFC 8265) name; names that have none are skipped.
    """
    entries: dict[str, PasswdEntry] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        entry = parse_line(raw.decode("utf-8", "surrogateescape"))
        if entry is None:
            continue
        try:
            user = canonical_username(entry.user)
        except InvalidUsername as exc:
            log.warning("%s line %d: skipped: %s", path, number, exc)
            continue
        if user in entries:
            log.warning("%s line %d: user %s exists more than once", path, number, user)
            continue
        entries[user] = entry if user == entry.user else dataclasses.replace(entry, user=user)
    return entries


class PasswdFile:
    """A passwd-file, re-read when it changes (one stat per lookup)."""

    def __init__(self, path: StrPath) -> None:
        self.path = os.fspath(path)
        # (stamp, entries) of the last read, replaced as one so a reader never pairs a
        # new stamp with old entries.
        self._read: tuple[tuple[int, ...], dict[str, PasswdEntry]] | None = None
        # Reloads run in worker threads; one at a time.
        self._lock = threading.Lock()

    def entries_if_unchanged(self) -> dict[str, PasswdEntry] | None:
        """The entries read last if the file is still what was read (one stat, done on the
        caller's thread); None if it must be read again, or cannot even be stat'ed (the
        reader reports that)."""
        read = self._read
        if read is None:
            return None
        try:
            return read[1] if _stamp(os.stat(self.path)) == read[0] else None
        except OSError:
            return None

    def lookup(self, user: str) -> PasswdEntry | None:
        """The entry for canonical name `user`; raises OSError if the file cannot be read."""
        with self._lock:
            return self._refresh().get(user)

    def users(self) -> list[str]:
        with self._lock:
            return list(self._refresh())

    def _refresh(self) -> dict[str, PasswdEntry]:
        read = self._read
        if read is not None and _stamp(os.stat(self.path)) == read[0]:
            return read[1]
        with open(self.path, "rb") as handle:
            # The stamp of what we read (fstat), not of what stat() saw a moment earlier.
            stamp = _stamp(os.fstat(handle.fileno()))
            data = handle.read()
        entries = parse_passwd_file(data, self.path)
        self._read = (stamp, entries)
        return entries


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    # An atomic replace changes the inode; an in-place edit changes size or mtime/ctime.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class PasswdFileAuthenticator(UserDatabaseAuthenticator):
    """The Authenticator (auth/base.py) over a passwd-file, optionally with bearer tokens;
    the verification is auth/userdb.py's."""

    default_scheme = PASSWD_FILE_DEFAULT_SCHEME

    def __init__(self, path: StrPath, *, oauth: BearerVerifier | None = None) -> None:
        self._file = PasswdFile(path)
        super().__init__(f"passwd-file {self._file.path}", oauth=oauth)

    async def find(self, user: str) -> UserRecord | None:
        # The file unchanged (Dovecot's passwd-file also stats it per lookup): no thread
        # hop. Changed, new or unreadable: read, parsed and reported by a worker thread.
        entries = self._file.entries_if_unchanged()
        if entries is not None:
            entry = entries.get(user)
        else:
            entry = await asyncio.to_thread(self._lookup, user)
        if entry is None:
            return None
        return UserRecord(entry.user, entry.secret, parse_user_settings(entry.extra_fields))

    def _lookup(self, user: str) -> PasswdEntry | None:
        try:
            return self._file.lookup(user)
        except OSError as exc:
            log.error("passwd-file %s: cannot read: %s", self._file.path, exc.strerror)
            raise


def list_users(path: StrPath) -> list[str]:
    """User names in file order."""
    try:
        return PasswdFile(path).users()
    except OSError as exc:
        raise PasswdFileError(f"{os.fspath(path)}: cannot read: {exc.strerror}") from exc
