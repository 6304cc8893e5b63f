"""Settled spend batched to the repository, and every sidecar's totals read back.

``SpendBatch`` is the half of the ledger (``proxy.core.spend``) that talks to the
``SpendBackend``: settled costs wait in an in-memory delta that :meth:`SpendBatch.flush`
writes every ``flush_seconds``, reading back every sidecar's totals (the *view*) in the
same transaction, so the request path never waits for the database (ADR 0100). Idle
(nothing to write, no budgeted caller for a minute), it sends no query at all.

Failure: deltas a flush could not write stay pending (merged back) and go with the next
flush; nothing is dropped, and each failure is reported through ``on_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, date, datetime

from proxy.core.ports import Clock
from proxy.core.spend_rows import (
    ROW_FIELDS,
    TENANT,
    USER,
    RowKey,
    ScopeKey,
    SpendBackend,
    SpendRow,
)

_KEEP_FRESH_SECONDS = 60.0
_SECONDS_PER_DAY = 86_400.0  # a UTC day in POSIX time (no leap seconds)


class SpendBatch:
    """Pending deltas, their flushes and the shared view; see the module docstring."""

    def __init__(
        self,
        backend: SpendBackend,
        *,
        flush_seconds: float,
        clock: Clock,
        wall_clock: Callable[[], float],
        on_error: Callable[[BaseException], None] | None,
    ) -> None:
        self._backend = backend
        self.flush_seconds = flush_seconds
        self._clock = clock
        self._wall = wall_clock
        self._on_error = on_error
        self._view: dict[tuple[int, str, str], int] = {}
        self._view_day: date | None = None
        self._view_month_start: date | None = None
        self._fresh_at = -float("inf")
        self._unflushed: dict[ScopeKey, int] = {}
        self._flushing: dict[ScopeKey, int] = {}
        self._pending: dict[RowKey, list[int]] = {}
        self._flush: asyncio.Task[None] | None = None
        self._loop: asyncio.Task[None] | None = None
        self.failed_flushes = 0
        self._budgeted_at = -float("inf")
        # The UTC day of the last reading and the wall-clock span it covers: every
        # request asks, and building a date each time costs more than the comparison.
        self._today = self._month_start = date.min
        """The UTC day of the last ``today()``, and the first day of its month."""
        self._today_from = self._today_to = 0.0

    def today(self) -> date:
        now = self._wall()
        if not self._today_from <= now < self._today_to:
            day = now // _SECONDS_PER_DAY
            self._today_from, self._today_to = day * _SECONDS_PER_DAY, (day + 1) * _SECONDS_PER_DAY
            self._today = datetime.fromtimestamp(now, UTC).date()
            self._month_start = self._today.replace(day=1)
        return self._today

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
            self._view_month_start = today.replace(day=1)
            self._fresh_at = self._clock()
        finally:
            self._flush = None

    def _restore(self, rows: list[SpendRow]) -> None:
        """A failed flush: its rows and sums are pending again (nothing is lost)."""
        pending = self._pending
        for row in rows:
            key = (row.day, row.tenant, row.user, row.model)
            values = pending.setdefault(key, [0] * ROW_FIELDS)
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
