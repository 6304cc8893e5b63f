"""Budgets in dollars: a per-sidecar view of the shared spend, batched to the repository.

Every request holds a :class:`SpendHold`. For a budgeted caller (its tenant or its user
has a budget) admission first checks the window's spend, as this sidecar knows it, is
below the budget, then reserves the request's worst-case cost; the hold settles to the
real cost when the response ends, or is refunded. Settled costs go into an in-memory
delta that :meth:`SpendLedger.flush` writes to the repository every ``flush_seconds``,
reading back every sidecar's totals in the same transaction (``proxy.core.spend_batch``):
so the request path never waits for the database, and N sidecars sharing a repository
overspend a budget by at most N x (flush interval x spend rate + their worst cases in
flight) (ADR 0100). Rows and the backend port: ``proxy.core.spend_rows``.

What a sidecar believes a scope (tenant or user) has spent in its window::

    shared view (last read, if still this window) + settled here since (unflushed and being
    flushed) + reserved in flight here

Windows are UTC calendar days or months, from the injected wall clock; the view of a
past window is simply not used, so a window rolls over without a database round trip.

Failure: deltas a flush could not write stay pending and go with the next flush. While
the view is older than ``stale_seconds``, a budgeted caller's admission waits for one
flush (shared by everyone waiting) and is refused with 503 when it fails: budgets fail
closed, like auth. Unbudgeted callers are never refused for it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import date

from proxy.core.errors import QuotaExceeded, ServiceUnavailable
from proxy.core.ports import Caller, Clock
from proxy.core.pricing import NANOS_PER_USD
from proxy.core.spend_batch import SpendBatch
from proxy.core.spend_rows import (
    MAX_MODEL_NAME,
    ROW_FIELDS,
    TENANT,
    USER,
    SpendBackend,
    period_start,
)


class SpendHold:
    """One request's place in the ledger: its reservation, then its real cost, once."""

    __slots__ = ("_ledger", "_reserved", "_scopes", "caller", "done", "remaining_usd")

    def __init__(
        self, ledger: SpendLedger, caller: Caller, scopes: tuple[tuple[int, str], ...]
    ) -> None:
        self._ledger = ledger
        self.caller = caller
        self._scopes = scopes
        self._reserved = 0
        self.done = False
        self.remaining_usd: float | None = None
        """What the tightest budget had left at admission (``None``: no budget)."""

    @property
    def reserved_nanos(self) -> int:
        return self._reserved

    def settle(
        self, model: str | None, cost_nanos: int | None, input_tokens: int, output_tokens: int
    ) -> None:
        """The request's real cost (``None``: unknown, no price) replaces its reservation."""
        if not self.done:
            self.done = True
            self._ledger._release(self._scopes, self._reserved)
            self._ledger._record(self, model, cost_nanos, input_tokens, output_tokens)

    def refund(self) -> None:
        """Nothing is charged (the upstream failed, or nothing is known of what it did)."""
        if not self.done:
            self.done = True
            self._ledger._release(self._scopes, self._reserved)


class SpendLedger(SpendBatch):
    """Reserve, settle and batch spend; see the module docstring."""

    def __init__(
        self,
        backend: SpendBackend,
        *,
        flush_seconds: float = 1.0,
        stale_seconds: float | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__(
            backend,
            flush_seconds=flush_seconds,
            clock=clock,
            wall_clock=wall_clock,
            on_error=on_error,
        )
        self._stale = stale_seconds if stale_seconds is not None else max(5.0, 5 * flush_seconds)
        self._reserved: dict[tuple[int, str], int] = {}
        self._tenant_budgets: dict[str, tuple[float, str]] = {}
        """Tenant -> (budget USD, window), as last seen at admission: for the gauge."""

    # -- admission ---------------------------------------------------------------------

    async def admit(self, caller: Caller, worst_case_nanos: int) -> SpendHold:
        """A hold for this request; raises ``QuotaExceeded`` (429) when a budget is spent,
        ``ServiceUnavailable`` (503) when a budgeted caller's spend cannot be known."""
        tenant_budget = caller.tenant_budget_usd
        user_budget = caller.user_budget_usd
        if tenant_budget is None:
            if self._tenant_budgets:  # a budget removed: the tenant leaves the gauge
                self._tenant_budgets.pop(caller.tenant, None)
            if user_budget is None:
                return SpendHold(self, caller, ())
        else:
            self._tenant_budgets[caller.tenant] = (tenant_budget, caller.budget_window)
        now = self._budgeted_at = self._clock()
        if now - self._fresh_at > self._stale:
            with contextlib.suppress(ConnectionError):
                await self.flush()
            if self._clock() - self._fresh_at > self._stale:
                raise ServiceUnavailable(
                    "Spend cannot be checked: the user repository is unreachable.",
                    code="spend_unavailable",
                    headers={"Retry-After": "1"},
                )
        window = caller.budget_window
        today = self.today()
        period = today if window == "day" else self._month_start  # period_start, cached
        remaining: int | None = None
        scopes: list[tuple[int, str]] = []
        for kind, name, budget in (
            (TENANT, caller.tenant, tenant_budget),
            (USER, caller.user, user_budget),
        ):
            if budget is None:
                continue
            left = round(budget * NANOS_PER_USD) - self._spent(kind, name, window, period, today)
            remaining = left if remaining is None else min(remaining, left)
            scopes.append((kind, name))
        assert remaining is not None
        remaining_usd = max(remaining, 0) / NANOS_PER_USD
        if remaining <= 0:
            raise QuotaExceeded(
                f"Your {'tenant' if tenant_budget is not None else 'user'} has spent its"
                f" {'daily' if window == 'day' else 'monthly'} budget.",
                remaining_usd=remaining_usd,
            )
        hold = SpendHold(self, caller, tuple(scopes))
        hold.remaining_usd = remaining_usd
        if worst_case_nanos > 0:
            hold._reserved = worst_case_nanos
            reserved = self._reserved
            for scope in hold._scopes:
                reserved[scope] = reserved.get(scope, 0) + worst_case_nanos
        return hold

    def _spent(self, kind: int, name: str, window: str, period: date, today: date) -> int:
        spent = self._reserved.get((kind, name), 0)
        key = (kind, name, window, period)
        spent += self._unflushed.get(key, 0) + self._flushing.get(key, 0)
        view_period = self._view_day if window == "day" else self._view_month_start
        if view_period == period:  # the view is of this window (None: no view yet)
            spent += self._view.get((kind, name, window), 0)
        return spent

    def spent_usd(self, kind: int, name: str, window: str) -> float:
        """What this sidecar believes ``name`` spent in its current window (for tests, ops)."""
        today = self.today()
        return self._spent(kind, name, window, period_start(window, today), today) / NANOS_PER_USD

    def budget_used_ratios(self) -> list[tuple[str, float]]:
        """``(tenant, spent / budget)`` for every tenant admitted here with a budget: its
        current window's settled spend as this sidecar knows it (shared view + settled
        here, reservations in flight excluded). In memory only: no database round trip.
        A budget of 0 counts as spent (1.0)."""
        today = self.today()
        ratios = []
        for tenant, (budget, window) in self._tenant_budgets.items():
            period = period_start(window, today)
            spent = self._spent(TENANT, tenant, window, period, today)
            spent -= self._reserved.get((TENANT, tenant), 0)
            budget_nanos = round(budget * NANOS_PER_USD)
            ratios.append((tenant, spent / budget_nanos if budget_nanos > 0 else 1.0))
        return ratios

    # -- settling ----------------------------------------------------------------------

    def _release(self, scopes: tuple[tuple[int, str], ...], amount: int) -> None:
        if amount:
            reserved = self._reserved
            for scope in scopes:
                left = reserved[scope] - amount
                if left:
                    reserved[scope] = left
                else:
                    del reserved[scope]

    def _record(
        self,
        hold: SpendHold,
        model: str | None,
        cost_nanos: int | None,
        input_tokens: int,
        output_tokens: int,
    ) -> None:
        caller = hold.caller
        today = self.today()
        key = (today, caller.tenant, caller.user, (model or "none")[:MAX_MODEL_NAME])
        row = self._pending.get(key)
        if row is None:
            row = self._pending[key] = [0] * ROW_FIELDS
        cost = cost_nanos or 0
        row[0] += cost
        row[1] += input_tokens
        row[2] += output_tokens
        row[3] += 1
        if cost_nanos is None:
            row[4] += 1
        if cost:
            unflushed = self._unflushed
            month = self._month_start  # of today's month: set by today() above
            for scope in (
                (TENANT, caller.tenant, "day", today),
                (TENANT, caller.tenant, "month", month),
                (USER, caller.user, "day", today),
                (USER, caller.user, "month", month),
            ):
                unflushed[scope] = unflushed.get(scope, 0) + cost
        self._ensure_flusher()
