"""RFC 8265 (PRECIS) preparation of user names and passwords, via precis-i18n.

With the UTF8 extension (RFC 6856 section 3), user names and passwords may be non-ASCII, so
the same name or password can arrive as different code point sequences (precomposed or
decomposed accents, fullwidth letters). RFC 6856 section 2 asks for the PRECIS profiles:

- user names: UsernameCasePreserved (RFC 8265 section 3.3): width mapping, NFC, no case
  mapping, because Dovecot passwd-files are case-sensitive;
- passwords: OpaqueString (RFC 8265 section 4.2): non-ASCII spaces become U+0020, NFC.

Both are no-ops for the printable ASCII names and passwords POP3 has always carried.
"""

from __future__ import annotations

from precis_i18n import get_profile

from popbox.auth.usernames import InvalidUsername, validate_username

__all__ = ["canonical_username", "normalize_password", "normalize_username"]

_USERNAME = get_profile("UsernameCasePreserved")
_PASSWORD = get_profile("OpaqueString")


def normalize_username(name: str) -> str:
    """The RFC 8265 UsernameCasePreserved form of `name`; InvalidUsername if disallowed."""
    try:
        return str(_USERNAME.enforce(name))
    except UnicodeError as exc:
        # The reason (e.g. "DISALLOWED/spaces") only: never echo a client's input raw.
        raise InvalidUsername(f"user name is not allowed by RFC 8265 ({_reason(exc)})") from None


def canonical_username(name: str) -> str:
    """The name to look up and to open the maildrop with; InvalidUsername if unusable.

    Checked before preparation (for its specific messages) and after it, because width
    mapping can turn fullwidth forms into '/', ':' or '.' (U+FF0F, U+FF1A, U+FF0E).
    """
    return validate_username(normalize_username(validate_username(name)))


def normalize_password(password: str) -> str:
    """The RFC 8265 OpaqueString form of `password`; ValueError if disallowed.

    The error carries neither the password nor the offending character.
    """
    try:
        return str(_PASSWORD.enforce(password))
    except UnicodeError as exc:
        raise ValueError(f"password is not allowed by RFC 8265 ({_reason(exc)})") from None


def _reason(exc: UnicodeError) -> str:
    reason = getattr(exc, "reason", "")
    return reason if isinstance(reason, str) and reason else "invalid"
