"""Connections to one PostgreSQL database: a small pool for short work (deliveries, user
lookups), dedicated connections for POP3 sessions, and backoff while it is unreachable.

A session keeps its own connection for its whole life, because the RFC 1939 section 8 lock
is a session-level advisory lock that lives and dies with that connection: when a node
dies, PostgreSQL ends its connections and every lock it held is gone.

While the database cannot be reached, every attempt fails with DatabaseUnavailable, which
callers turn into `-ERR [SYS/TEMP]` (RFC 3206) or an LMTP 451; after a failed connection
attempt the next one waits a growing pause (BACKOFF_FIRST doubling up to BACKOFF_MAX), and
attempts in between fail at once without touching the network. The first success ends the
pause, so the server recovers by itself when the database comes back. Dead pooled
connections are replaced by asyncpg on the next acquire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from popbox.db.url import redact

__all__ = [
    "DB_ERRORS",
    "AnyConnection",
    "Backoff",
    "Database",
    "DatabaseUnavailable",
]

log = logging.getLogger(__name__)

# How long a login may wait for a connection (asyncpg's default, 60 s, outlasts clients).
CONNECT_TIMEOUT = 5.0
# Any one statement; a stalled database then fails the command instead of hanging it.
COMMAND_TIMEOUT = 30.0
# Connections for short work per process; sessions have their own (see the module doc).
POOL_MAX_SIZE = 10
# Pause after a failed connection attempt: doubled per failure up to the maximum.
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 4.0
# Closing a session's connection politely; after that it is cut.
CLOSE_TIMEOUT = 5.0

# What a database that went away (or refused the work) raises through asyncpg.
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


# A session's own connection or one lent by the pool: the same statements work on both.
AnyConnection = asyncpg.Connection | PoolConnectionProxy


class DatabaseUnavailable(Exception):
    """The database cannot do it now (unreachable, restarting, refusing): a temporary
    failure. The message never contains the password."""


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if isinstance(exc, OSError | TimeoutError) else text


class Backoff:
    """A pause after each failed attempt, growing from `first` to `maximum`."""

    def __init__(
        self,
        first: float = BACKOFF_FIRST,
        maximum: float = BACKOFF_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first = first
        self.maximum = maximum
        self._clock = clock
        self._delay = 0.0
        self._until = 0.0

    @property
    def waiting(self) -> float:
        """Seconds until the next attempt is allowed (0: now)."""
        return max(0.0, self._until - self._clock())

    def failed(self) -> float:
        self._delay = min(self.maximum, self._delay * 2 if self._delay else self.first)
        self._until = self._clock() + self._delay
        return self._delay

    def succeeded(self) -> None:
        self._delay = 0.0
        self._until = 0.0


class Database:
    """One database URL; the pool is made on first use, in the running event loop."""

    def __init__(self, url: str, *, backoff: Backoff | None = None) -> None:
        self.url = url
        self.display = redact(url)
        self.backoff = backoff or Backoff()
        self._pool: asyncpg.Pool | None = None
        self._down = False  # for logging the outage once, and the recovery

    def __repr__(self) -> str:
        return f"Database({self.display!r})"

    async def connect(self) -> asyncpg.Connection:
        """A dedicated connection (a POP3 session's). Raises DatabaseUnavailable."""
        self._gate()
        try:
            conn = await asyncpg.connect(
                self.url, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT
            )
        except DB_ERRORS as exc:
            raise self._failed(exc) from exc
        self._succeeded()
        return conn

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[PoolConnectionProxy]:
        """A pooled connection for short work. Database errors inside the block, and
        failures to connect, leave it as DatabaseUnavailable."""
        self._gate()
        try:
            pool = await self._pool_now()
            conn = await pool.acquire(timeout=CONNECT_TIMEOUT)
        except DB_ERRORS as exc:
            raise self._failed(exc) from exc
        self._succeeded()
        try:
            yield conn
        except DB_ERRORS as exc:
            raise DatabaseUnavailable(f"{self.display}: {describe(exc)}") from exc
        finally:
            await _release(pool, conn)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except DB_ERRORS:
                pool.terminate()
            except asyncio.CancelledError:
                pool.terminate()
                raise

    async def _pool_now(self) -> asyncpg.Pool:
        if self._pool is None:
            # min_size=0: no connection is made before it is needed, so a server can
            # start while the database is down.
            pool = await asyncpg.create_pool(
                self.url,
                min_size=0,
                max_size=POOL_MAX_SIZE,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
            )
            if self._pool is None:
                self._pool = pool
            else:  # another task made one meanwhile
                await pool.close()
        return self._pool

    def _gate(self) -> None:
        waiting = self.backoff.waiting
        if waiting > 0:
            raise DatabaseUnavailable(
                f"{self.display}: unreachable, next attempt in {waiting:.2f} s"
            )

    def _failed(self, exc: BaseException) -> DatabaseUnavailable:
        delay = self.backoff.failed()
        if not self._down:
            log.error("database %s unreachable: %s", self.display, describe(exc))
        else:
            log.warning(
                "database %s still unreachable (%s); retrying in %.2f s",
                self.display,
                describe(exc),
                delay,
            )
        self._down = True
        return DatabaseUnavailable(f"{self.display}: {describe(exc)}")

    def _succeeded(self) -> None:
        if self._down:
            log.info("database %s reachable again", self.display)
        self._down = False
        self.backoff.succeeded()


async def _release(pool: asyncpg.Pool, conn: PoolConnectionProxy) -> None:
    try:
        await pool.release(conn, timeout=CLOSE_TIMEOUT)
    except DB_ERRORS as exc:
        # A connection that broke under us: asyncpg drops it; nothing else to do.
        log.debug("releasing a broken connection: %s", describe(exc))
