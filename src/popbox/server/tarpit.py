"""Replies to a run of bad commands wait: past half of [limits] max_bad_commands in a row,
each -ERR leaves bad_command_delay seconds late (Postfix's smtpd_error_sleep_time past
smtpd_soft_error_limit).

A client that sends garbage gets -ERR for each line and is closed after max_bad_commands
in a row. Without a delay it reconnects at once and starts again: five connections that
send random binary after login made 140 sessions a second, a third of the server's CPU,
under tests/server/test_hostile_clients.py. With it, each of them costs a session every
few seconds. The first half of a run is answered at once, so a real client's typo, or its
probe of an extension the server lacks, costs it nothing.
"""

from __future__ import annotations

import asyncio

from popbox.protocol.session import Pop3Session
from popbox.server.context import ServerContext, SessionPolicy


def tarpitted(policy: SessionPolicy, session: Pop3Session) -> bool:
    """Whether the reply the session just made answers a bad command that must wait."""
    return policy.bad_command_delay > 0 and session.bad_commands > policy.max_bad_commands // 2


async def tarpit(ctx: ServerContext, interrupt: asyncio.Event) -> None:
    """Wait bad_command_delay, or less once `interrupt` is set: by the server when it
    closes idle sessions (a session in its delay waits for nothing but time, so it is
    one of ctx.idle meanwhile), or by the connection when the client is gone."""
    if ctx.closing or interrupt.is_set():
        return
    ctx.metrics.bad_command_delays.inc()
    ctx.idle.add(interrupt)
    try:
        async with asyncio.timeout(ctx.policy.bad_command_delay):
            await interrupt.wait()
    except TimeoutError:
        pass
    finally:
        ctx.idle.discard(interrupt)
