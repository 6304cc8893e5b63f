"""Raw connections to one standalone Redis, for the shared buckets (``buckets_redis``).

Only redis-py's connection factory is used (URL parsing, TLS, AUTH/SELECT on connect):
its client and pool add ~40-60 µs of CPU per command (locks, retry, events, ``wait_for``
tasks). :meth:`RedisConnections.call` writes already packed commands in one write on an
idle connection and reads their replies; one ``asyncio.timeout`` per call covers send
and read (no socket timeout in redis-py). A script Redis forgot (restart, ``SCRIPT
FLUSH``, failover) is loaded and the commands it refused are sent again.

Errors are redis-py's and ``OSError``/``TimeoutError``, raised as they come; the limiter
decides what they mean. A lost server takes every pooled socket with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, NoScriptError

from proxy.adapters.buckets_redis_script import SCRIPT_LOAD

_CONNECTION_LOST = (RedisConnectionError, OSError)


class RedisConnections:
    """Up to ``max_connections`` sockets to one Redis, reused last in, first out."""

    __slots__ = ("_connect_timeout", "_factory", "_idle", "_made", "_max_connections", "_timeout")

    def __init__(
        self,
        redis_url: str,
        *,
        timeout_seconds: float,
        connect_timeout_seconds: float,
        max_connections: int,
    ) -> None:
        self._factory = ConnectionPool.from_url(
            redis_url,
            socket_timeout=None,
            socket_connect_timeout=connect_timeout_seconds,
            retry=Retry(NoBackoff(), 0),
        )
        self._idle: list[Any] = []
        self._made = 0
        self._max_connections = max_connections
        self._timeout = timeout_seconds
        self._connect_timeout = connect_timeout_seconds + timeout_seconds

    async def call(self, commands: Sequence[bytes]) -> Any:
        """Send packed commands in one write on an idle connection; the last reply."""
        if self._idle:
            conn = self._idle.pop()
        elif self._made < self._max_connections:
            conn = self._factory.make_connection()  # type: ignore[no-untyped-call]
            self._made += 1
        else:
            raise MaxConnectionsError("Too many connections")
        try:
            if not conn.is_connected:
                async with asyncio.timeout(self._connect_timeout):
                    await conn.connect()
            async with asyncio.timeout(self._timeout):
                return await self._exchange(conn, commands)
        except BaseException as exc:
            # An unread reply would answer the next command: start over on a new socket.
            await conn.disconnect(nowait=True)
            if isinstance(exc, _CONNECTION_LOST):
                # The server went away (restarted, failed over): every pooled socket is as
                # dead as this one. Left alone, each would fail once when next used, each
                # failure a second on the fallback buckets, for minutes after recovery.
                for idle in self._idle:
                    await idle.disconnect(nowait=True)
            raise
        finally:
            self._idle.append(conn)

    @staticmethod
    async def _exchange(conn: Any, commands: Sequence[bytes]) -> Any:
        await conn.send_packed_command(b"".join(commands), check_health=False)
        refused, reply = [], None
        for command in commands:
            try:
                reply = await conn.read_response()
            except NoScriptError:
                refused.append(command)
        if refused:  # restart, SCRIPT FLUSH or failover: load it, resend what it refused
            await conn.send_packed_command(SCRIPT_LOAD + b"".join(refused), check_health=False)
            await conn.read_response()
            for _ in refused:
                reply = await conn.read_response()
        return reply

    async def aclose(self) -> None:
        """Close every connection."""
        for conn in self._idle:
            await conn.disconnect()
        self._idle.clear()
        await self._factory.aclose()
