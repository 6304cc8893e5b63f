"""PostgresPool: the asyncpg pool behind PostgresUserRepository, opened by one shared attempt.

Auth fails closed, and it must fail promptly. So while the database is unreachable:

- **one attempt at a time.** The pool is created (and the schema migrated) by one task;
  every caller that arrives meanwhile awaits that same task (through ``asyncio.shield``,
  so a departing caller cancels nothing) and gets its outcome. Sixteen uncached lookups
  against a database that accepts and never answers all fail after one connect timeout,
  not one after the other (which took 16 x 5 s = 80 s for the last of them);
- **back off after a failure.** For a short interval after a failed attempt every caller
  gets :class:`RepositoryUnavailable` at once, without touching the network. The interval
  starts at ``backoff_first_seconds`` (0.5 s), doubles after each further failure and is
  capped at ``backoff_max_seconds`` (5 s); a success resets it. The first caller after
  the interval makes the next attempt, and those arriving while it runs share it.

Once the pool works, callers acquire connections from it in parallel (asyncpg opens at
most the pool's size at once, each bounded by the connect timeout), so a database lost
later also fails them within one timeout. The repository reports what fails on the
pool: a connection that could not be acquired (asyncpg opens them lazily, so this is a
connection attempt too) or a query that timed out marks it unhealthy and starts the
back-off; the next attempt is then one probe (``SELECT 1`` on one connection) shared by
every caller. A connection the server dropped is not an outage: the next call
reconnects at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

import asyncpg

from auth.adapters.schema_postgres import migrate_schema
from auth.core.errors import RepositoryUnavailable

BACKOFF_FIRST_SECONDS: Final = 0.5
BACKOFF_MAX_SECONDS: Final = 5.0
UNAVAILABLE: Final = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # e.g. a connection the server killed mid-protocol
)


def unavailable(exc: BaseException) -> RepositoryUnavailable:
    """The error callers see: the driver error's type, never the DSN or a password."""
    return RepositoryUnavailable(f"PostgreSQL user store unreachable: {type(exc).__name__}")


class PostgresPool:
    """Hands out the asyncpg pool; one shared connection attempt, then back-off on failure."""

    __slots__ = (
        "_attempt",
        "_backoff",
        "_backoff_first",
        "_backoff_max",
        "_clock",
        "_command_timeout",
        "_connect_timeout",
        "_dsn",
        "_healthy",
        "_last_error",
        "_max_connections",
        "_pool",
        "_retry_at",
    )

    def __init__(
        self,
        dsn: str,
        *,
        max_connections: int,
        connect_timeout_seconds: float,
        command_timeout_seconds: float,
        backoff_first_seconds: float = BACKOFF_FIRST_SECONDS,
        backoff_max_seconds: float = BACKOFF_MAX_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dsn = dsn
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout_seconds
        self._command_timeout = command_timeout_seconds
        self._backoff_first = backoff_first_seconds
        self._backoff_max = backoff_max_seconds
        self._clock = clock
        self._pool: asyncpg.Pool | None = None
        self._healthy = False  # the pool exists and nothing has failed on it since
        self._attempt: asyncio.Task[asyncpg.Pool] | None = None
        self._backoff = 0.0  # the interval the last failure started; 0 after a success
        self._retry_at = 0.0
        self._last_error = ""

    def __repr__(self) -> str:
        return "PostgresPool(<dsn hidden>)"

    async def get(self) -> asyncpg.Pool:
        """The pool, once a connection attempt has worked; raises RepositoryUnavailable."""
        pool = self._pool
        if pool is not None and self._healthy:
            return pool
        attempt = self._attempt
        if attempt is None:
            wait = self._retry_at - self._clock()
            if wait > 0:
                raise RepositoryUnavailable(
                    f"PostgreSQL user store unreachable: {self._last_error};"
                    f" next attempt in {wait:.1f} s"
                )
            attempt = self._attempt = asyncio.ensure_future(self._connect())
            attempt.add_done_callback(_mark_retrieved)
        try:
            return await asyncio.shield(attempt)
        except RepositoryUnavailable as exc:
            # A fresh error per caller: one shared instance would collect every traceback.
            raise RepositoryUnavailable(str(exc)) from exc.__cause__

    def failed(self, exc: BaseException) -> None:
        """Report a failed connection or a timed-out query: back off, then probe once."""
        self._healthy = False
        self._last_error = type(exc).__name__
        now = self._clock()
        if now < self._retry_at:
            return  # callers that failed together are one failure, not a faster back-off
        if self._backoff:
            self._backoff = min(self._backoff * 2, self._backoff_max)
        else:
            self._backoff = self._backoff_first
        self._retry_at = now + self._backoff

    async def _connect(self) -> asyncpg.Pool:
        try:
            pool = self._pool
            if pool is None:
                pool = await self._open()
                self._pool = pool
            else:
                async with pool.acquire(timeout=self._connect_timeout) as conn:
                    await conn.fetchval("SELECT 1")
        except UNAVAILABLE as exc:
            self.failed(exc)
            raise unavailable(exc) from exc
        finally:
            self._attempt = None
        self._healthy = True
        self._backoff = 0.0
        return pool

    async def _open(self) -> asyncpg.Pool:
        pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self._max_connections,
            timeout=self._connect_timeout,
            command_timeout=self._command_timeout,
        )
        try:
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                await migrate_schema(conn)
        except BaseException:
            pool.terminate()  # nothing useful is open; close() could wait on a dead server
            raise
        return pool

    async def close(self) -> None:
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()
            await asyncio.wait([attempt])
        pool, self._pool = self._pool, None
        self._healthy = False
        if pool is None:
            return
        try:
            async with asyncio.timeout(self._command_timeout):
                await pool.close()
        except TimeoutError:
            pool.terminate()


def _mark_retrieved(task: asyncio.Task[asyncpg.Pool]) -> None:
    # Every waiter may have gone away; reading the exception keeps asyncio quiet about it.
    if not task.cancelled():
        task.exception()
