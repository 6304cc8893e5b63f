"""Budgets in dollars: a per-sidecar view of the shared spend, batched to the repository.

Every request holds a :class:`SpendHold`. For a budgeted caller (its tenant or its user
has a budget) admission first checks the window's spend, as this sidecar knows it, is
below the budget, then reserves the request's worst-case cost; the hold settles to the
real cost when the response ends, or is refunded. Settled costs go into an in-memory
delta that :meth:`SpendLedger.flush` writes to the repository every ``flush_seconds``,
reading back every sidecar's totals in the same transaction: so the request path never
waits for the database, and N sidecars sharing a repository overspend a budget by at most
N x (flush interval x spend rate + their worst cases in flight) (ADR 0100).

What a sidecar believes a scope (tenant or user) has spent in its window::

    shared view (last read, if still this window) + settled here since (unflushed and being
    flushed) + reserved in flight here

Windows are UTC calendar days or months, from the injected wall clock; the view of a
past window is simply not used, so a window rolls over without a database round trip.

Failure: deltas a flush could not write stay pending (merged back) and go with the next
flush; nothing is dropped, and each failure is reported through ``on_error``. While the
view is older than ``stale_seconds``, a budgeted caller's admission waits for one flush
(shared by everyone waiting) and is refused with 503 when it fails: budgets fail closed,
like auth. Unbudgeted callers are never refused for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol

from proxy.core.errors import QuotaExceeded, ServiceUnavailable
from proxy.core.ports import Caller, Clock
from proxy.core.pricing import NANOS_PER_USD

TENANT, USER = 0, 1
_ROW_FIELDS = 5  # cost_nanos, input_tokens, output_tokens, requests, unpriced_requests
MAX_MODEL_NAME = 200
_KEEP_FRESH_SECONDS = 60.0
RowKey = tuple[date, str, str, str]  # day, tenant, user, model
ScopeKey = tuple[int, str, str, date]  # TENANT/USER, name, window, period start


@dataclass(frozen=True, slots=True)
class SpendRow:
    """One (day, tenant, user, model) delta, as the backend writes it."""

    day: date
    tenant: str
    user: str
    model: str
    cost_nanos: int
    input_tokens: int
    output_tokens: int
    requests: int
    unpriced_requests: int


class SpendBackend(Protocol):
    async def record(
        self, rows: Sequence[SpendRow], today: date
    ) -> list[tuple[str, str, int, int]]:
        """Add ``rows``; return ``(tenant, user, day_nanos, month_nanos)`` of every user for
        ``today`` and its month. Raises ``ConnectionError`` when the store is unreachable."""
        ...


def _period(window: str, today: date) -> date:
    return today if window == "day" else today.replace(day=1)


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


class SpendLedger:
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
        self._backend = backend
        self.flush_seconds = flush_seconds
        self._stale = stale_seconds if stale_seconds is not None else max(5.0, 5 * flush_seconds)
        self._clock = clock
        self._wall = wall_clock
        self._on_error = on_error
        self._view: dict[tuple[int, str, str], int] = {}
        self._view_day: date | None = None
        self._fresh_at = -float("inf")
        self._reserved: dict[tuple[int, str], int] = {}
        self._unflushed: dict[ScopeKey, int] = {}
        self._flushing: dict[ScopeKey, int] = {}
        self._pending: dict[RowKey, list[int]] = {}
        self._flush: asyncio.Task[None] | None = None
        self._loop: asyncio.Task[None] | None = None
        self.failed_flushes = 0
        self._budgeted_at = -float("inf")
        self._tenant_budgets: dict[str, tuple[float, str]] = {}
        """Tenant -> (budget USD, window), as last seen at admission: for the gauge."""

    def today(self) -> date:
        return datetime.fromtimestamp(self._wall(), UTC).date()

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
        self._budgeted_at = self._clock()
        if self._clock() - self._fresh_at > self._stale:
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
        period = _period(window, today)
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
        view_day = self._view_day
        if view_day is not None and _period(window, view_day) == period:
            spent += self._view.get((kind, name, window), 0)
        return spent

    def spent_usd(self, kind: int, name: str, window: str) -> float:
        """What this sidecar believes ``name`` spent in its current window (for tests, ops)."""
        today = self.today()
        return self._spent(kind, name, window, _period(window, today), today) / NANOS_PER_USD

    def budget_used_ratios(self) -> list[tuple[str, float]]:
        """``(tenant, spent / budget)`` for every tenant admitted here with a budget: its
        current window's settled spend as this sidecar knows it (shared view + settled
        here, reservations in flight excluded). In memory only: no database round trip.
        A budget of 0 counts as spent (1.0)."""
        today = self.today()
        ratios = []
        for tenant, (budget, window) in self._tenant_budgets.items():
            period = _period(window, today)
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
            row = self._pending[key] = [0] * _ROW_FIELDS
        cost = cost_nanos or 0
        row[0] += cost
        row[1] += input_tokens
        row[2] += output_tokens
        row[3] += 1
        if cost_nanos is None:
            row[4] += 1
        if cost:
            unflushed = self._unflushed
            month = today.replace(day=1)
            for scope in (
                (TENANT, caller.tenant, "day", today),
                (TENANT, caller.tenant, "month", month),
                (USER, caller.user, "day", today),
                (USER, caller.user, "month", month),
            ):
                unflushed[scope] = unflushed.get(scope, 0) + cost
        self._ensure_flusher()

    # -- flushing ----------------------------------------------------------------------

    async def flush(self) -> None:
        """Write what is pending and read the shared totals; one flush at a time (callers
        arriving meanwhile share it). Raises ``ConnectionError`` when it failed."""
        task = self._flush
        if task is None:
            task = self._flush = asyncio.ensure_future(self._flush_once())
            task.add_done_callback(_mark_retrieved)
        await asyncio.shield(task)

    async def _flush_once(self) -> None:
        try:
            rows = [SpendRow(*key, *values) for key, values in self._pending.items()]
            self._pending = {}
            self._flushing, self._unflushed = self._unflushed, {}
            today = self.today()
            try:
                totals = await self._backend.record(rows, today)
            except BaseException as exc:
                self._restore(rows)
                if isinstance(exc, ConnectionError):
                    self.failed_flushes += 1
                    if self._on_error is not None:
                        self._on_error(exc)
                raise
            view: dict[tuple[int, str, str], int] = {}
            for tenant, user, day_nanos, month_nanos in totals:
                for kind, name in ((TENANT, tenant), (USER, user)):
                    for window, amount in (("day", day_nanos), ("month", month_nanos)):
                        view[(kind, name, window)] = view.get((kind, name, window), 0) + amount
            self._view, self._view_day, self._flushing = view, today, {}
            self._fresh_at = self._clock()
        finally:
            self._flush = None

    def _restore(self, rows: list[SpendRow]) -> None:
        """A failed flush: its rows and sums are pending again (nothing is lost)."""
        pending = self._pending
        for row in rows:
            key = (row.day, row.tenant, row.user, row.model)
            values = pending.setdefault(key, [0] * _ROW_FIELDS)
            for index, value in enumerate(
                (row.cost_nanos, row.input_tokens, row.output_tokens, row.requests)
            ):
                values[index] += value
            values[4] += row.unpriced_requests
        unflushed = self._unflushed
        for scope, amount in self._flushing.items():
            unflushed[scope] = unflushed.get(scope, 0) + amount
        self._flushing = {}

    @property
    def pending_rows(self) -> int:
        return len(self._pending)

    def _ensure_flusher(self) -> None:
        if self._loop is None or self._loop.done():
            with contextlib.suppress(RuntimeError):  # no running loop: flushed by aclose
                self._loop = asyncio.get_running_loop().create_task(self._run())

    def start(self) -> None:
        """Keep the view fresh (and flush) in the background from now on."""
        self._ensure_flusher()

    async def _run(self) -> None:
        # Idle (nothing to write, no budgeted caller for a minute): no query at all.
        while True:
            await asyncio.sleep(self.flush_seconds)
            if self._pending or self._clock() - self._budgeted_at < _KEEP_FRESH_SECONDS:
                with contextlib.suppress(ConnectionError):
                    await self.flush()

    async def aclose(self) -> list[SpendRow]:
        """Stop the background flusher and write what is pending (one last try); returns
        what could still not be written, for the caller to log."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        if self._pending or self._flush is not None:
            with contextlib.suppress(ConnectionError):
                await self.flush()
        return [SpendRow(*key, *values) for key, values in self._pending.items()]


def _mark_retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
