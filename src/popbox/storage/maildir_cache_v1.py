"""Version 1 of the maildrop cache (text, one column per line), still read so that an
upgrade keeps the recorded retrieval times; storage/maildir_cache.py writes version 2.

    popbox-cache<TAB>1<TAB><uidl settings><TAB><count>
    octets<TAB><n> <n> ...              wire sizes (RFC 1939 section 11)
    delivered<TAB><ns> <ns> ...         delivery times ordering the listing
    rank<TAB><n> <n> ...                the migration source's order
    uidl<TAB><id> <id> ...              unique-ids handed out (RFC 1939 section 7)
    retrieved<TAB><t|-> <t|-> ...       first RETR, Unix time, or "-"
    names
    <base name>                         one per line; backslash, tab, CR, LF escaped
    ...
    end
"""

from __future__ import annotations

import math
import re

from popbox.storage.maildir_cache import CacheTable, CorruptCache

_MAGIC = "popbox-cache"
CACHE_VERSION = 1
_COLUMNS = ("octets", "delivered", "rank", "uidl", "retrieved")
_NAMES = "names"
_END = "end\n"

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {value[1]: key for key, value in _ESCAPES.items()}
_ESCAPED = re.compile(r"\\(.?)", re.DOTALL)

# The whole uidl column in one match: space-separated valid unique-ids (RFC 1939 section 7).
_UIDL_COLUMN = re.compile(r"[\x21-\x7e]{1,70}(?: [\x21-\x7e]{1,70})*")


def parse_cache_v1(text: str) -> CacheTable:
    """Parse a whole version 1 file (decoded with os.fsdecode). Raises CorruptCache."""
    parts = text.split("\n", len(_COLUMNS) + 2)
    if len(parts) != len(_COLUMNS) + 3:
        raise CorruptCache("too short")
    header = parts[0].split("\t")
    if len(header) != 4 or header[0] != _MAGIC or header[1] != str(CACHE_VERSION):
        raise CorruptCache(f"unknown header {parts[0][:80]!r}")
    count = _count(header[3])
    columns = []
    for label, line in zip(_COLUMNS, parts[1:], strict=False):
        name, tab, values = line.partition("\t")
        if name != label or not tab:
            raise CorruptCache(f"expected the {label} column")
        items = values.split(" ") if count else []
        if len(items) != count or (not count and values):
            raise CorruptCache(f"{label}: {len(items)} values for {count} messages")
        columns.append(items)
    if parts[len(_COLUMNS) + 1] != _NAMES:
        raise CorruptCache("expected the names")
    names = _parse_names(parts[-1], count)
    octets, delivered, ranks, unique_ids, retrieved = columns
    if count and not _UIDL_COLUMN.fullmatch(" ".join(unique_ids)):
        raise CorruptCache("an invalid unique-id")
    return CacheTable(
        settings=header[2],
        names=names,
        octets=_numbers(octets, "octets"),
        delivered_ns=_numbers(delivered, "delivered"),
        ranks=_numbers(ranks, "rank"),
        unique_ids=unique_ids,
        first_retrieved=[None if item == "-" else _retrieval_time(item) for item in retrieved],
    )


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise CorruptCache(f"bad count {text[:20]!r}")
    return int(text)


def _parse_names(tail: str, count: int) -> list[str]:
    if not tail.endswith(_END):
        raise CorruptCache("no end line: the file was cut")
    body = tail[: -len(_END)]
    names = body.split("\n")[:-1] if body else []
    if len(names) != count or (body and not body.endswith("\n")):
        raise CorruptCache(f"{len(names)} names for {count} messages")
    if "\\" in body:
        names = [_ESCAPED.sub(_unescape, name) if "\\" in name else name for name in names]
    if len(set(names)) != count or "" in names:
        raise CorruptCache("an empty or repeated name")
    return names


def _numbers(items: list[str], label: str) -> list[int]:
    try:
        numbers = list(map(int, items))
    except ValueError:
        raise CorruptCache(f"{label}: not a number") from None
    if numbers and min(numbers) < 0:
        raise CorruptCache(f"{label}: negative")
    return numbers


def _retrieval_time(text: str) -> float:
    try:
        when = float(text)
    except ValueError:
        raise CorruptCache("retrieved: not a time") from None
    if not math.isfinite(when) or when < 0:
        raise CorruptCache("retrieved: not a time")
    return when


def _unescape(match: re.Match[str]) -> str:
    unescaped = _UNESCAPES.get(match.group(1))
    if unescaped is None:
        raise CorruptCache("a bad escape in a name")
    return unescaped
