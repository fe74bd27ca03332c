"""The Dovecot passwd-file line format, shared by the reader (passwdfile.py) and the editor
(passwdedit.py).

Line format (https://doc.dovecot.org/2.3/configuration_manual/authentication/passwd_file/):

    user:{SCHEME}secret:uid:gid:gecos:home:shell:extra_fields

Only the user and password fields are needed to log in. Empty lines and lines starting with
`#` or `:` are skipped, and extra fields may contain `:` (as Dovecot's db-passwd-file.c).
Secrets without `{SCHEME}` are CRYPT.

User names are compared in their RFC 8265 UsernameCasePreserved form (auth/precis.py), both
the file's and the client's, so `e` + U+0301 finds the user written with U+00E9. Dovecot
compares octets; for the ASCII names of existing files the two are the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from popbox.auth.precis import canonical_username
from popbox.auth.usernames import InvalidUsername

__all__ = [
    "PASSWD_FILE_DEFAULT_SCHEME",
    "NoSuchUser",
    "PasswdEntry",
    "PasswdFileError",
    "StrPath",
    "UserExists",
    "line_user",
    "parse_line",
]

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


def line_user(line: bytes) -> str | None:
    """The canonical user name of a raw file line, None for comments and unusable names."""
    entry = parse_line(line.decode("utf-8", "surrogateescape"))
    if entry is None:
        return None
    try:
        return canonical_username(entry.user)
    except InvalidUsername:
        return None
