"""Users in a Dovecot passwd-file, and the edits behind `popbox user add|passwd|del|list`.

Line format (https://doc.dovecot.org/2.3/configuration_manual/authentication/passwd_file/):

    user:{SCHEME}secret:uid:gid:gecos:home:shell:extra_fields

Only the user and password fields are needed to log in. Empty lines and lines starting with
`#` or `:` are skipped; a user listed twice keeps its first line, and extra fields may contain
`:` (all as Dovecot's db-passwd-file.c). Secrets without `{SCHEME}` are CRYPT.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import hashlib
import hmac
import logging
import os
import secrets
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from popbox.auth import schemes
from popbox.auth.base import AuthOutcome, AuthResult
from popbox.auth.usernames import InvalidUsername, validate_username

__all__ = [
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

# Mode of a passwd-file we create: it holds password hashes (Dovecot's docs advise 0600).
NEW_FILE_MODE = 0o600
# The passwd-file's default scheme (Dovecot: passdb passwd-file `scheme=CRYPT`).
PASSWD_FILE_DEFAULT_SCHEME = "CRYPT"
_FIELDS_BEFORE_EXTRA = 7  # user, password, uid, gid, gecos, home, shell

StrPath = str | os.PathLike[str]


class PasswdFileError(Exception):
    """A passwd-file problem; the message names the file and can be shown to the admin."""


class UserExists(PasswdFileError):
    """`add_user` for a name already in the file."""


class NoSuchUser(PasswdFileError):
    """`set_password`/`delete_user` for a name not in the file."""


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    user: str
    secret: str = field(repr=False)
    uid: str = ""
    gid: str = ""
    gecos: str = ""
    home: str = ""
    shell: str = ""
    # Everything after the shell, `:` included, as written (Dovecot: space-separated
    # key=value extra fields).
    extra_fields: str = ""


def parse_line(line: str) -> PasswdEntry | None:
    """One passwd-file line (without its newline) -> entry, or None for comments/blanks."""
    line = line.removesuffix("\r")
    if not line or line[0] in "#:":
        return None
    fields = line.split(":")
    user, secret, uid, gid, gecos, home, shell = fields[:_FIELDS_BEFORE_EXTRA] + [""] * (
        _FIELDS_BEFORE_EXTRA - len(fields)
    )
    extra = ":".join(fields[_FIELDS_BEFORE_EXTRA:])
    return PasswdEntry(user, secret, uid, gid, gecos, home, shell, extra)


def parse_passwd_file(data: bytes, path: str = "passwd-file") -> dict[str, PasswdEntry]:
    """All usable entries by user name, in file order; the first line of a user wins."""
    entries: dict[str, PasswdEntry] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        entry = parse_line(raw.decode("utf-8", "surrogateescape"))
        if entry is None:
            continue
        try:
            validate_username(entry.user)
        except InvalidUsername as exc:
            log.warning("%s line %d: skipped: %s", path, number, exc)
            continue
        if entry.user in entries:
            log.warning("%s line %d: user %s exists more than once", path, number, entry.user)
            continue
        entries[entry.user] = entry
    return entries


class PasswdFile:
    """A passwd-file, re-read when it changes (one stat per lookup)."""

    def __init__(self, path: StrPath) -> None:
        self.path = os.fspath(path)
        self._stamp: tuple[int, ...] | None = None
        self._entries: dict[str, PasswdEntry] = {}
        # Lookups run in worker threads; one reload at a time.
        self._lock = threading.Lock()

    def lookup(self, user: str) -> PasswdEntry | None:
        """The entry for `user`; raises OSError if the file cannot be read."""
        with self._lock:
            self._refresh()
            return self._entries.get(user)

    def users(self) -> list[str]:
        with self._lock:
            self._refresh()
            return list(self._entries)

    def _refresh(self) -> None:
        if self._stamp is not None and _stamp(os.stat(self.path)) == self._stamp:
            return
        with open(self.path, "rb") as handle:
            # The stamp of what we read (fstat), not of what stat() saw a moment earlier.
            stamp = _stamp(os.fstat(handle.fileno()))
            data = handle.read()
        self._entries = parse_passwd_file(data, self.path)
        self._stamp = stamp


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    # An atomic replace changes the inode; an in-place edit changes size or mtime/ctime.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.cache
def _dummy_secret() -> str:
    """A fixed ARGON2ID hash of a random password, so unknown users cost a verification."""
    return schemes.hash_password(secrets.token_urlsafe(24), "ARGON2ID")


_INVALID = AuthResult(AuthOutcome.INVALID_CREDENTIALS)
_TEMPORARY = AuthResult(AuthOutcome.TEMPORARY_FAILURE)


class PasswdFileAuthenticator:
    """The Authenticator (auth/base.py) over a passwd-file."""

    def __init__(self, path: StrPath) -> None:
        self._file = PasswdFile(path)

    async def verify_password(self, user: str, password: str) -> AuthResult:
        if not password:
            # Never a valid password, whatever the file says (`{PLAIN}` with nothing after).
            return _INVALID
        try:
            validate_username(user)
        except InvalidUsername:
            return _INVALID
        # argon2/bcrypt take tens of milliseconds of CPU: keep them off the event loop.
        return await asyncio.to_thread(self._verify_password, user, password)

    async def verify_apop(self, user: str, timestamp: str, digest: str) -> AuthResult:
        try:
            validate_username(user)
        except InvalidUsername:
            return _INVALID
        return await asyncio.to_thread(self._verify_apop, user, timestamp, digest)

    def _lookup(self, user: str) -> PasswdEntry | None:
        try:
            return self._file.lookup(user)
        except OSError as exc:
            log.error("passwd-file %s: cannot read: %s", self._file.path, exc.strerror)
            raise

    def _verify_password(self, user: str, password: str) -> AuthResult:
        try:
            entry = self._lookup(user)
        except OSError:
            return _TEMPORARY
        if entry is None:
            # Same work as for a known user, so timing does not tell them apart.
            schemes.verify(password, _dummy_secret())
            return _INVALID
        try:
            matched = schemes.verify(
                password, entry.secret, default_scheme=PASSWD_FILE_DEFAULT_SCHEME
            )
        except schemes.SchemeError as exc:
            log.warning(
                "passwd-file %s: user %s: unusable password: %s", self._file.path, user, exc
            )
            return _INVALID
        return AuthResult(AuthOutcome.OK, entry.user) if matched else _INVALID

    def _verify_apop(self, user: str, timestamp: str, digest: str) -> AuthResult:
        """RFC 1939 section 7: digest = hex MD5(timestamp + shared secret)."""
        try:
            entry = self._lookup(user)
        except OSError:
            return _TEMPORARY
        secret = None
        if entry is not None:
            try:
                secret = schemes.plain_secret(
                    entry.secret, default_scheme=PASSWD_FILE_DEFAULT_SCHEME
                )
            except schemes.SchemeError:
                secret = None
        # A user without a PLAIN secret answers like a wrong digest (not MECHANISM_UNAVAILABLE),
        # so APOP does not reveal which users exist or how their secret is stored.
        key = secret if secret is not None else secrets.token_hex(16)
        expected = hashlib.md5(_octets(timestamp) + _octets(key)).hexdigest()
        matched = hmac.compare_digest(expected.encode("ascii"), _octets(digest.lower()))
        if entry is None or secret is None or not matched:
            return _INVALID
        return AuthResult(AuthOutcome.OK, entry.user)


def _octets(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# --- editing, for the CLI -------------------------------------------------------------


def add_user(path: StrPath, user: str, password: str, scheme: str = schemes.DEFAULT_SCHEME) -> None:
    """Append `user:{SCHEME}hash`; creates the file (mode 0600) if missing.

    Raises InvalidUsername, schemes.UnknownScheme, ValueError (empty password), UserExists
    or PasswdFileError; all carry a message for the admin.
    """
    validate_username(user)
    line = f"{user}:{schemes.hash_password(password, scheme)}".encode()
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
    validate_username(user)
    secret = schemes.hash_password(password, scheme).encode()
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
    validate_username(user)
    with _editing(path, must_exist=True) as (real, lines):
        found = set(_find(lines, user))
        if not found:
            raise NoSuchUser(f"{real}: no user {user}")
        _replace(real, [line for index, line in enumerate(lines) if index not in found])


def list_users(path: StrPath) -> list[str]:
    """User names in file order."""
    try:
        return PasswdFile(path).users()
    except OSError as exc:
        raise PasswdFileError(f"{os.fspath(path)}: cannot read: {exc.strerror}") from exc


def _find(lines: list[bytes], user: str) -> list[int]:
    """Indexes of the lines that belong to `user`."""
    return [
        index
        for index, line in enumerate(lines)
        if (entry := parse_line(line.decode("utf-8", "surrogateescape"))) is not None
        and entry.user == user
    ]


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
    fd, temp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), stat.S_IMODE(old.st_mode) if old else NEW_FILE_MODE)
            if old is not None:
                _keep_owner(real, handle.fileno(), old)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, real)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_directory(real.parent)


def _keep_owner(real: Path, fd: int, old: os.stat_result) -> None:
    """Give the new file the old one's owner, so the server can still read it."""
    if (old.st_uid, old.st_gid) == (os.geteuid(), os.getegid()):
        return
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except PermissionError:
        # Not root: the edited file now belongs to us, as with any editor.
        log.warning("%s: cannot keep owner %d:%d", real, old.st_uid, old.st_gid)


def _fsync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # some filesystems cannot fsync a directory
            raise
    finally:
        os.close(dir_fd)
