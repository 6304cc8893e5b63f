"""Spend on the real repositories: SQLite and PostgreSQL keep it across restarts, and three
sidecars sharing one PostgreSQL overspend a budget by no more than ADR 0100's bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from auth.adapters.repo_postgres import PostgresUserRepository
from auth.adapters.repo_sqlite import SqliteUserRepository
from auth.core.admin import AdminService
from auth.core.ports import UserRepository
from proxy.core.errors import QuotaExceeded
from proxy.core.spend import SpendLedger
from proxy.core.spend_rows import TENANT
from proxy.entrypoints.spend_bridge import RepositorySpendBackend
from tests.support.fakes import FakeCaller
from tests.support.postgres import fresh_database

CENT = 10_000_000  # nano-dollars
MARCH = datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def opener(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], UserRepository]]:
    if request.param == "sqlite":
        yield lambda: SqliteUserRepository(tmp_path / "users.db")
        return
    async with fresh_database("llmsc_spend") as url:
        yield lambda: PostgresUserRepository(url)


async def test_restart_keeps_the_month_spend(opener: Callable[[], UserRepository]) -> None:
    """Spend flushed by one sidecar still stops the tenant after a restart (a new process)."""
    repo = opener()
    await repo.migrate()
    admin = AdminService(repo)
    await admin.create_tenant("acme", budget_usd=0.02, budget_window="month")
    await admin.create_user("alice", tenant="acme", budget_usd=None)
    tenant = await admin.get_tenant("acme")
    assert (tenant.budget_usd, tenant.budget_window) == (0.02, "month")
    caller = FakeCaller(tenant_budget_usd=0.02)
    ledger = SpendLedger(RepositorySpendBackend(repo), wall_clock=lambda: MARCH)
    for _ in range(2):
        hold = await ledger.admit(caller, CENT)
        hold.settle("gpt-4o-mini", CENT, 100, 20)
    assert await ledger.aclose() == []
    await repo.close()

    reopened = opener()
    restarted = SpendLedger(RepositorySpendBackend(reopened), wall_clock=lambda: MARCH)
    with pytest.raises(QuotaExceeded):
        await restarted.admit(caller, 0)
    [line] = await reopened.spend_report(date(2026, 3, 1), "acme")
    assert (line.user, line.model, line.cost_nanos, line.input_tokens, line.requests) == (
        "alice",
        "gpt-4o-mini",
        2 * CENT,
        200,
        2,
    )
    assert await reopened.spend_report(date(2026, 3, 1), "other") == []
    await restarted.aclose()
    await reopened.close()


async def test_user_budget_and_window_round_trip(opener: Callable[[], UserRepository]) -> None:
    """Budgets set by the admin service come back on the principal a key resolves to."""
    repo = opener()
    await repo.migrate()
    admin = AdminService(repo)
    await admin.create_tenant("acme", budget_usd=5.0, budget_window="day")
    user, key = await admin.create_user("alice", tenant="acme", budget_usd=1.5)
    assert user.budget_usd == 1.5
    await admin.set_user_budget("alice", 2.5)
    await admin.update_tenant("acme", budget_window="month")
    from auth.core import keys

    record = await repo.find_key(keys.digest(key))
    assert record is not None
    principal = record.principal
    assert (principal.tenant_budget_usd, principal.user_budget_usd, principal.budget_window) == (
        5.0,
        2.5,
        "month",
    )
    await admin.update_tenant("acme", budget_usd=None)
    assert (await admin.get_tenant("acme")).budget_usd is None
    await repo.close()


@pytest.mark.postgres
async def test_three_sidecars_overspend_within_the_bound() -> None:
    """Three ledgers on one PostgreSQL under concurrent load stay within ADR 0100's bound."""
    sidecars, workers, flush = 3, 4, 0.1
    budget_cents = 100
    async with fresh_database("llmsc_spend") as url:
        repos = [PostgresUserRepository(url) for _ in range(sidecars)]
        await repos[0].migrate()
        ledgers = [SpendLedger(RepositorySpendBackend(repo), flush_seconds=flush) for repo in repos]
        for ledger in ledgers:
            ledger.start()
        caller = FakeCaller(tenant_budget_usd=budget_cents / 100)
        served = [0] * sidecars

        async def worker(index: int) -> None:
            ledger = ledgers[index]
            while True:
                try:
                    hold = await ledger.admit(caller, CENT)
                except QuotaExceeded:
                    return
                await asyncio.sleep(0.005)  # the upstream call
                hold.settle("gpt-4o-mini", CENT, 10, 10)
                served[index] += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(sidecars) for _ in range(workers)))
        elapsed = time.monotonic() - started
        for ledger in ledgers:
            assert await ledger.aclose() == []
        lines = await repos[0].spend_report(datetime.now(UTC).date().replace(day=1))
        spent_cents = sum(line.cost_nanos for line in lines) // CENT
        assert spent_cents == sum(served)
        # Bound: N x (flush interval (+ one round trip) x spend rate + worst case in flight).
        rate = max(served) / elapsed  # cents per second of the busiest sidecar
        bound = sidecars * ((flush + 0.05) * rate + workers)
        assert budget_cents <= spent_cents <= budget_cents + bound, (spent_cents, bound)
        for ledger in ledgers:
            assert ledger.spent_usd(TENANT, "acme", "month") >= budget_cents / 100
        for repo in repos:
            await repo.close()
