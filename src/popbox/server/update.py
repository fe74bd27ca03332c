"""The UPDATE state (RFC 1939 section 6): the marked messages and, RFC 2449 section 6.7
EXPIRE, the expired ones are removed; first retrievals are recorded for EXPIRE."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from popbox.protocol.events import Reply
from popbox.protocol.session import Pop3Session
from popbox.server.context import ServerContext
from popbox.storage.base import Maildrop, MessageInfo, StoreError

log = logging.getLogger("popbox.session")


@dataclass(frozen=True, slots=True)
class UpdateAnswer:
    reply: Reply
    removed: int


async def commit_update(
    ctx: ServerContext,
    session: Pop3Session,
    maildrop: Maildrop,
    keys: Sequence[str],
    *,
    retrieved: set[str],
    expire_days: int | None,
) -> UpdateAnswer:
    """Record first retrievals (best effort; only where EXPIRE applies: they are what it
    counts from), remove the marked and expired messages, and the core's reply: +OK, or
    -ERR if some could not be removed. A QUIT that removes nothing touches no file."""
    now = time.time()
    if retrieved and expire_days is not None:
        try:
            await maildrop.record_retrievals(sorted(retrieved), now)
        except (StoreError, OSError) as error:
            ctx.metrics.store_error("update")
            log.warning("retrieval times not saved user=%s error=%s", session.user, error)
    expired = expired_keys(maildrop.listing, retrieved, expire_days, now) - set(keys)
    if not keys and not expired:
        return UpdateAnswer(session.update_done(failed=0, expired=0), 0)
    result = await maildrop.delete([*keys, *sorted(expired)])
    if result.failed:
        ctx.metrics.store_error("update")
        log.error("update user=%s not removed=%d", session.user, len(result.failed))
    reply = session.update_done(failed=len(result.failed), expired=len(expired))
    return UpdateAnswer(reply, len(result.removed))


def expired_keys(
    listing: Sequence[MessageInfo], retrieved: set[str], days: int | None, now: float
) -> set[str]:
    """RFC 2449 section 6.7 EXPIRE: the messages first retrieved `days` or more days ago
    (with 0: every retrieved message, in this session or before)."""
    if days is None:
        return set()
    expired = set()
    for message in listing:
        first = message.first_retrieved
        if first is None and message.key in retrieved:
            first = now
        if first is not None and (days == 0 or now - first >= days * 86400):
            expired.add(message.key)
    return expired
