"""PostgreSQL outages fail closed promptly: one shared connection attempt, then back-off.

The "database" is a real TCP listener started here: it accepts and never answers
(``hold``), or relays to the real PostgreSQL server on 127.0.0.1:5432 (``forward``).
Back-off intervals run on a fake clock; connect timeouts are real and short.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry

from auth.adapters.repo_postgres import PostgresUserRepository
from auth.core import keys
from auth.core.admin import AdminService
from auth.core.errors import RepositoryUnavailable
from auth.core.service import AuthService
from proxy.adapters.metrics_prometheus import SidecarMetrics
from proxy.core.errors import ServiceUnavailable
from proxy.entrypoints.auth_bridge import RepositoryAuthenticator
from tests.support.fakes import FakeClock
from tests.support.postgres import fresh_database

CONNECT_TIMEOUT = 0.5
CALLERS = 16


class Database:
    """A listener standing in for PostgreSQL: holds connections unanswered, or relays them."""

    def __init__(self) -> None:
        self.forward = False
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> Database:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        if not self.forward:
            await reader.read()  # accept, never answer
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5432)
        self._writers.append(up_writer)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def cut(self) -> None:
        """Drop every open connection (both sides), as a database that went away does."""
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        await self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    sink.close()


@pytest.fixture
async def database() -> AsyncIterator[Database]:
    db = await Database().start()
    yield db
    await db.stop()


async def _timed_failure(
    authenticate: Callable[[str], Awaitable[object]], header: str, started: float
) -> float:
    """Seconds from ``started`` until ``authenticate`` failed closed."""
    with pytest.raises((RepositoryUnavailable, ServiceUnavailable)):
        await authenticate(header)
    return time.monotonic() - started


async def test_concurrent_lookups_share_one_attempt_and_fail_within_one_timeout(
    database: Database,
) -> None:
    """16 uncached lookups against a silent database all get a 503 after one connect timeout."""
    repo = PostgresUserRepository(database.dsn("x"), connect_timeout_seconds=CONNECT_TIMEOUT)
    service = AuthService(repo, cache_ttl_seconds=30)
    authenticator = RepositoryAuthenticator(service, SidecarMetrics(CollectorRegistry()))
    try:
        started = time.monotonic()
        waits = await asyncio.gather(
            *(
                _timed_failure(authenticator.authenticate, f"Bearer {keys.generate()}", started)
                for _ in range(CALLERS)
            )
        )
        assert max(waits) < 2.5 * CONNECT_TIMEOUT, waits  # was 16 x CONNECT_TIMEOUT
        assert database.accepted == 1  # one shared connection attempt, not one each
        with pytest.raises(ServiceUnavailable) as caught:
            await authenticator.authenticate(f"Bearer {keys.generate()}")
        assert caught.value.status == 503
        started = time.monotonic()
        wait = await _timed_failure(service.authenticate, f"Bearer {keys.generate()}", started)
        assert wait < 0.1  # backing off: fails at once
        assert database.accepted == 1
    finally:
        await service.close()


async def test_failed_attempts_back_off_doubling_to_a_cap(database: Database) -> None:
    """After each failed attempt callers fail fast for 0.5, 1, 2, 4, then at most 5 seconds."""
    clock = FakeClock()
    repo = PostgresUserRepository(database.dsn("x"), connect_timeout_seconds=0.1, clock=clock)
    try:
        with pytest.raises(RepositoryUnavailable):
            await repo.ping()
        assert database.accepted == 1
        for interval in (0.5, 1.0, 2.0, 4.0, 5.0, 5.0):
            clock.advance(interval - 0.01)
            with pytest.raises(RepositoryUnavailable, match="next attempt in"):
                await repo.ping()
            attempts = database.accepted
            clock.advance(0.01)
            with pytest.raises(RepositoryUnavailable):
                await repo.ping()
            assert database.accepted == attempts + 1
    finally:
        await repo.close()


@pytest.mark.postgres
async def test_recovers_once_the_database_answers_again(database: Database) -> None:
    """Failures during the outage; after the back-off the next lookup reconnects and succeeds."""
    async with fresh_database() as url:
        seed = PostgresUserRepository(url)
        try:
            await AdminService(seed).create_tenant("acme")
            _, key = await AdminService(seed).create_user("alice", tenant="acme")
        finally:
            await seed.close()
        clock = FakeClock()
        repo = PostgresUserRepository(
            database.dsn(url.rsplit("/", 1)[1]),
            connect_timeout_seconds=CONNECT_TIMEOUT,
            clock=clock,
        )
        service = AuthService(repo, cache_ttl_seconds=30, clock=clock)
        try:
            with pytest.raises(RepositoryUnavailable):
                await service.authenticate(f"Bearer {key}")
            assert not await service.ready()
            database.forward = True
            with pytest.raises(RepositoryUnavailable):  # still backing off
                await service.authenticate(f"Bearer {key}")
            assert database.accepted == 1
            clock.advance(0.5)
            principal = await service.authenticate(f"Bearer {key}")
            assert (principal.tenant, principal.user) == ("acme", "alice")
            assert await service.ready()
        finally:
            await service.close()


@pytest.mark.postgres
async def test_a_database_lost_after_start_is_probed_once_then_recovers(
    database: Database,
) -> None:
    """Connections cut and the server silent: lookups fail within a timeout, then one probe."""
    async with fresh_database() as url:
        clock = FakeClock()
        database.forward = True
        repo = PostgresUserRepository(
            database.dsn(url.rsplit("/", 1)[1]),
            connect_timeout_seconds=CONNECT_TIMEOUT,
            clock=clock,
        )
        try:
            await AdminService(repo).create_tenant("acme")
            _, key = await AdminService(repo).create_user("alice", tenant="acme")
            service = AuthService(repo, cache_ttl_seconds=30, clock=clock)
            database.forward = False
            await database.cut()
            started = time.monotonic()
            waits = await asyncio.gather(
                *(
                    _timed_failure(service.authenticate, f"Bearer {keys.generate()}", started)
                    for _ in range(CALLERS)
                )
            )
            assert max(waits) < 2.5 * CONNECT_TIMEOUT, waits
            during = database.accepted
            with pytest.raises(RepositoryUnavailable, match="next attempt in"):
                await service.authenticate(f"Bearer {key}")
            assert database.accepted == during  # backing off: no connection attempted
            database.forward = True
            clock.advance(0.5)
            principals = await asyncio.gather(
                *(service.authenticate(f"Bearer {key}") for _ in range(CALLERS))
            )
            assert {p.user for p in principals} == {"alice"}
            assert database.accepted == during + 1  # the probe's connection serves them
        finally:
            await repo.close()
