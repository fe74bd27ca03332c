"""PostgreSQL connection URLs as the config names them (libpq's URI form, which asyncpg
reads): `postgresql://user:password@host:port/dbname?sslmode=require`.

A URL may carry a password; it must never reach a log line or an error message, so
everything that shows a URL shows `redact(url)`.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["URL_SCHEMES", "check_database_url", "is_database_url", "redact"]

# libpq accepts both spellings (PostgreSQL docs, 34.1.1 "Connection URIs").
URL_SCHEMES = ("postgresql://", "postgres://")
_HIDDEN = "***"


def is_database_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(URL_SCHEMES)


def redact(url: str) -> str:
    """The URL with its password (in the authority or a `password=` parameter) hidden."""
    try:
        parts = urlsplit(url)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        if at:
            user, colon, _ = userinfo.partition(":")
            userinfo = f"{user}{':' + _HIDDEN if colon else ''}@"
        netloc = userinfo + ",".join(_redact_host(host) for host in hosts.split(","))
        query = parts.query
        if "password" in query:
            pairs = parse_qsl(query, keep_blank_values=True)
            hidden = [(k, _HIDDEN if k == "password" else v) for k, v in pairs]
            query = urlencode(hidden, safe="*/")
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    except ValueError:
        # Unparseable: show only the scheme rather than risk showing a password.
        return url.split("://", 1)[0] + "://" + _HIDDEN


def _redact_host(host: str) -> str:
    """A host[:port]; what follows a colon that is no port may be a misplaced password."""
    name, colon, port = host.rpartition(":")
    if not colon or port.isdigit() or host.endswith("]"):
        return host
    return f"{name}:{_HIDDEN}"


def check_database_url(value: object) -> str:
    """`value` if it is a usable postgresql:// URL, else ValueError (its message shows the
    URL redacted)."""
    if not is_database_url(value):
        raise ValueError("expected a URL starting with 'postgresql://' or 'postgres://'")
    assert isinstance(value, str)
    try:
        parts = urlsplit(value)
        for host in parts.netloc.rpartition("@")[2].split(","):
            # A port that is not a number: urlsplit only checks the last host's.
            _, colon, port = host.rpartition(":") if not host.endswith("]") else ("", "", "")
            if colon and port and not (port.isdigit() and 0 < int(port) < 65536):
                raise ValueError("a port must be a number 1-65535")
    except ValueError as exc:
        raise ValueError(f"not a valid PostgreSQL URL ({exc}): {redact(value)}") from None
    if parts.fragment:
        raise ValueError(f"a PostgreSQL URL has no '#' fragment: {redact(value)}")
    return value
