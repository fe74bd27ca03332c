"""Mail locations in Dovecot's mail_location syntax: a path template with %u (the user),
%n (its local part), %d (its domain, user@domain) and %% (a literal percent sign)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from popbox.auth.usernames import InvalidUsername, validate_username
from popbox.storage.base import InvalidMaildropUser

# Location template fields, as in Dovecot's mail_location: %u user, %n its local part,
# %d its domain (user@domain), %% a literal percent sign.
_TEMPLATE_FIELD = re.compile(r"%(.?)", re.DOTALL)
_TEMPLATE_KEYS = frozenset("und%")


def check_template(template: str, kind: str) -> None:
    """Refuse a template that names no user or uses unknown fields (ValueError)."""
    if not template:
        raise ValueError(f"{kind} location template is empty")
    used = set(_TEMPLATE_FIELD.findall(template))
    unknown = used - _TEMPLATE_KEYS
    if unknown:
        names = ", ".join(sorted(f"%{key}" for key in unknown))
        raise ValueError(f"{kind} location template {template!r}: unknown field {names}")
    if not used & {"u", "n"}:
        # Without the user in the path every user would share one maildrop.
        raise ValueError(f"{kind} location template {template!r} lacks %u or %n")


def _path_part(value: str, field: str, user: str) -> str:
    """A user-derived path component, refused if it could leave its directory."""
    if value in {"", ".", ".."} or "/" in value or "\0" in value:
        raise InvalidMaildropUser(f"user name {user!r} gives an unusable {field}")
    return value


def expand_location(template: str, user: str) -> str:
    """The path for `user`: %u, %n, %d and %% replaced; "~" is NOT expanded."""
    local, _, domain = user.partition("@")
    fields = {"u": user, "n": local, "d": domain, "%": "%"}

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "%":
            return "%"
        return _path_part(fields[key], f"%{key}", user)

    return _TEMPLATE_FIELD.sub(substitute, template)


def user_location(template: str, user: str) -> str:
    """The path of `user`'s maildrop: the name is checked first (nothing that could leave
    the mail root gets this far). Raises InvalidMaildropUser; touches no file."""
    try:
        validate_username(user)
    except InvalidUsername as exc:
        raise InvalidMaildropUser(f"invalid user name {user!r}: {exc}") from exc
    return expand_location(template, user)


def refuse_beside_names(path: str, user: str, suffixes: Sequence[str], mark: str) -> str:
    """`path`, unless its last component ends in one of `suffixes` or contains `mark`:
    the names of the files kept beside a maildrop file, named after it. A user whose
    maildrop were so named would have it taken for another user's lock or index
    (InvalidMaildropUser)."""
    name = os.path.basename(path)
    clash = next((suffix for suffix in suffixes if name.endswith(suffix)), None)
    if clash is None and mark in name:
        clash = mark
    if clash is not None:
        raise InvalidMaildropUser(
            f"user name {user!r} gives a maildrop named like another's {clash!r} file"
        )
    return path
