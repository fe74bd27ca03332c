"""Which user names may reach the passwd-file and the mail root.

A user name becomes a path component under the mail root and the first field of a Dovecot
passwd-file line, so it is checked before any file is touched: nothing that could leave the
mail root (`/`, `.`, `..`), hide a maildrop (leading `.`), or break the `:`-separated,
line-based, `#`-commented file format.
"""

from __future__ import annotations

import unicodedata

__all__ = ["MAX_USERNAME_OCTETS", "InvalidUsername", "validate_username"]

# NAME_MAX on Linux and the BSDs: the longest single path component, in octets.
MAX_USERNAME_OCTETS = 255

# `:` separates passwd-file fields; `/` separates path components.
_FORBIDDEN = {":": "a ':'", "/": "a '/'"}


class InvalidUsername(ValueError):
    """The name cannot be a user name; the message says why (and never echoes it raw)."""


def validate_username(name: str) -> str:
    """Return `name` unchanged if it is a safe user name, else raise InvalidUsername."""
    if not name:
        raise InvalidUsername("user name is empty")
    try:
        octets = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates: octets that were not UTF-8 in the first place.
        raise InvalidUsername("user name is not valid UTF-8") from None
    if octets > MAX_USERNAME_OCTETS:
        raise InvalidUsername(f"user name is longer than {MAX_USERNAME_OCTETS} octets")
    for char in name:
        if char in _FORBIDDEN:
            raise InvalidUsername(f"user name contains {_FORBIDDEN[char]}")
        # Category Cc: C0 controls (NUL, CR, LF, ...), DEL and the C1 controls.
        if unicodedata.category(char) == "Cc":
            raise InvalidUsername(f"user name contains control character U+{ord(char):04X}")
        if char.isspace():
            raise InvalidUsername("user name contains whitespace")
    if ".." in name:
        raise InvalidUsername("user name contains '..'")
    if name.startswith("."):
        raise InvalidUsername("user name starts with '.'")
    if name.startswith("#"):
        # Dovecot's passwd-file reader skips lines starting with '#' as comments.
        raise InvalidUsername("user name starts with '#'")
    return name
