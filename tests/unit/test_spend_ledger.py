"""The spend ledger: budgets, windows rolling over at UTC midnight and month start, outages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

import pytest
from prometheus_client import CollectorRegistry

from auth.adapters.repo_memory import InMemoryUserRepository
from proxy.adapters.metrics_prometheus import SidecarMetrics
from proxy.core.errors import QuotaExceeded, ServiceUnavailable
from proxy.core.spend import SpendLedger
from proxy.core.spend_rows import TENANT, USER, SpendRow
from proxy.entrypoints.spend_bridge import RepositorySpendBackend
from tests.support.fakes import FakeCaller, FakeClock

CENT = 10_000_000  # nano-dollars


class SwitchableBackend:
    """The real in-memory repository behind a switch that makes it unreachable."""

    def __init__(self) -> None:
        self.repo = InMemoryUserRepository()
        self.inner = RepositorySpendBackend(self.repo)
        self.down = False

    async def record(
        self, rows: Sequence[SpendRow], today: date
    ) -> list[tuple[str, str, int, int]]:
        if self.down:
            raise ConnectionError("down")
        return await self.inner.record(rows, today)


def _ledger(
    wall: FakeClock, backend: SwitchableBackend | None = None
) -> tuple[SpendLedger, SwitchableBackend, FakeClock]:
    backend = backend or SwitchableBackend()
    clock = FakeClock()
    return SpendLedger(backend, clock=clock, wall_clock=wall), backend, clock


async def _spend(ledger: SpendLedger, caller: FakeCaller, nanos: int) -> None:
    hold = await ledger.admit(caller, nanos)
    hold.settle("m", nanos, 10, 10)


async def test_budget_admits_until_spent_then_refuses() -> None:
    """A tenant is admitted while its window's spend is below the budget, then gets a 429."""
    ledger, _, _ = _ledger(FakeClock(datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()))
    caller = FakeCaller(tenant_budget_usd=0.03)
    for _ in range(3):
        await _spend(ledger, caller, CENT)
    with pytest.raises(QuotaExceeded) as caught:
        await ledger.admit(caller, CENT)
    assert caught.value.headers["x-should-retry"] == "false"
    assert caught.value.headers["x-llm-sidecar-budget-remaining-usd"] == "0.000000"
    assert "Retry-After" not in caught.value.headers


async def test_user_budget_applies_within_the_tenant_window() -> None:
    """A user's own budget stops that user, not the tenant's other users."""
    ledger, _, _ = _ledger(FakeClock(datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()))
    alice = FakeCaller(user="alice", user_budget_usd=0.01)
    bob = FakeCaller(user="bob")
    await _spend(ledger, alice, CENT)
    with pytest.raises(QuotaExceeded):
        await ledger.admit(alice, 0)
    await _spend(ledger, bob, CENT)
    assert ledger.spent_usd(USER, "bob", "month") == pytest.approx(0.01)


async def test_reservations_count_until_settled_or_refunded() -> None:
    """In-flight worst cases count against the budget; a refund gives them back."""
    ledger, _, _ = _ledger(FakeClock(datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()))
    caller = FakeCaller(tenant_budget_usd=0.02)
    first = await ledger.admit(caller, 2 * CENT)
    assert first.remaining_usd == pytest.approx(0.02)
    with pytest.raises(QuotaExceeded):
        await ledger.admit(caller, CENT)
    first.refund()
    second = await ledger.admit(caller, 2 * CENT)
    second.settle("m", CENT // 2, 1, 1)
    assert ledger.spent_usd(TENANT, "acme", "month") == pytest.approx(0.005)


async def test_daily_window_rolls_over_at_utc_midnight() -> None:
    """Spend of yesterday does not count today, with no database round trip needed."""
    wall = FakeClock(datetime(2026, 3, 10, 23, 59, 59, tzinfo=UTC).timestamp())
    ledger, _, _ = _ledger(wall)
    caller = FakeCaller(tenant_budget_usd=0.01, budget_window="day")
    await _spend(ledger, caller, CENT)
    await ledger.flush()
    await _spend(ledger, FakeCaller(), 0)  # an unbudgeted request: no effect on the budget
    with pytest.raises(QuotaExceeded):
        await ledger.admit(caller, 0)
    wall.now = datetime(2026, 3, 11, 0, 0, 0, tzinfo=UTC).timestamp()
    (await ledger.admit(caller, 0)).refund()
    assert ledger.spent_usd(TENANT, "acme", "month") == pytest.approx(0.01)


async def test_monthly_window_rolls_over_at_month_start() -> None:
    """A month's spend stops the tenant until the first of the next month, 00:00 UTC."""
    wall = FakeClock(datetime(2026, 1, 31, 23, 0, tzinfo=UTC).timestamp())
    ledger, backend, _ = _ledger(wall)
    caller = FakeCaller(tenant_budget_usd=0.01)
    await _spend(ledger, caller, CENT)
    await ledger.flush()
    wall.now = datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    with pytest.raises(QuotaExceeded):
        await ledger.admit(caller, 0)
    wall.now = datetime(2026, 2, 1, tzinfo=UTC).timestamp()
    (await ledger.admit(caller, 0)).refund()
    # A fresh sidecar reading the repository in February sees nothing spent either.
    fresh, _, _ = _ledger(wall, backend)
    (await fresh.admit(caller, 0)).refund()


async def test_outage_keeps_deltas_and_fails_closed_for_budgets() -> None:
    """Unwritten spend is kept and written later; budgeted callers get 503 while stale."""
    wall = FakeClock(datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp())
    ledger, backend, clock = _ledger(wall)
    caller = FakeCaller(tenant_budget_usd=1.0)
    await _spend(ledger, caller, CENT)
    backend.down = True
    with pytest.raises(ConnectionError):
        await ledger.flush()
    await _spend(ledger, caller, CENT)
    assert ledger.failed_flushes == 1
    assert ledger.pending_rows == 1
    assert ledger.spent_usd(TENANT, "acme", "month") == pytest.approx(0.02)
    clock.advance(10)
    with pytest.raises(ServiceUnavailable) as caught:
        await ledger.admit(caller, 0)
    assert caught.value.code == "spend_unavailable"
    (await ledger.admit(FakeCaller(), 0)).refund()  # unbudgeted callers are not refused
    backend.down = False
    (await ledger.admit(caller, 0)).refund()  # the stale view is refreshed on the way
    lines = await backend.repo.spend_report(date(2026, 3, 1))
    assert [(line.cost_nanos, line.requests) for line in lines] == [(2 * CENT, 2)]
    assert await ledger.aclose() == []


async def test_unwritten_spend_is_returned_at_close() -> None:
    """What the last flush could not write comes back from aclose, to be logged."""
    ledger, backend, _ = _ledger(FakeClock(datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()))
    await _spend(ledger, FakeCaller(), CENT)
    backend.down = True
    [row] = await ledger.aclose()
    assert (row.tenant, row.cost_nanos, row.requests) == ("acme", CENT, 1)


async def test_budget_used_ratio_follows_settlements_for_budgeted_tenants_only() -> None:
    """The gauge's source: settled spend of the window / budget, reservations excluded;
    unbudgeted tenants absent; a removed budget leaves; the next window starts at 0."""
    wall = FakeClock(datetime(2026, 3, 31, 12, tzinfo=UTC).timestamp())
    ledger, _, _ = _ledger(wall)
    acme = FakeCaller(tenant_budget_usd=0.04)
    await _spend(ledger, FakeCaller(tenant="free"), CENT)
    assert ledger.budget_used_ratios() == []
    hold = await ledger.admit(acme, 3 * CENT)
    assert ledger.budget_used_ratios() == [("acme", 0.0)]  # the reservation does not count
    hold.settle("m", CENT, 1, 1)
    assert ledger.budget_used_ratios() == [("acme", pytest.approx(0.25))]
    await ledger.flush()  # now in the shared view: the same
    await _spend(ledger, acme, 2 * CENT)
    assert ledger.budget_used_ratios() == [("acme", pytest.approx(0.75))]
    await _spend(ledger, acme, CENT)
    assert ledger.budget_used_ratios() == [("acme", pytest.approx(1.0))]
    wall.now = datetime(2026, 4, 1, tzinfo=UTC).timestamp()
    assert ledger.budget_used_ratios() == [("acme", 0.0)]
    await _spend(ledger, FakeCaller(), 0)  # acme's budget was removed
    assert ledger.budget_used_ratios() == []


def test_budget_used_ratio_is_read_from_its_source_at_scrape_time() -> None:
    """``llm_sidecar_budget_used_ratio{tenant}`` has no series until a source is set."""
    registry = CollectorRegistry()
    metrics = SidecarMetrics(registry)
    name = "llm_sidecar_budget_used_ratio"
    assert registry.get_sample_value(name, {"tenant": "acme"}) is None
    ratios = [("acme", 0.5)]
    metrics.budget_used.source = lambda: ratios
    assert registry.get_sample_value(name, {"tenant": "acme"}) == 0.5
    ratios[:] = [("acme", 0.9), ("beta", 0.1)]
    assert registry.get_sample_value(name, {"tenant": "acme"}) == 0.9
    assert registry.get_sample_value(name, {"tenant": "beta"}) == 0.1
