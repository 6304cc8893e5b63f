"""The proxy's ``SpendBackend`` port over the user repository's spend table (``auth``).

The one place where spend meets ``auth``: rows become the repository's deltas, and its
``RepositoryUnavailable`` becomes the ``ConnectionError`` the ledger retries on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import structlog

from auth.core.errors import RepositoryUnavailable
from auth.core.spend import SpendDelta, SpendStore
from proxy.adapters.metrics_prometheus import SidecarMetrics
from proxy.core.pricing import usd
from proxy.core.spend_rows import SpendRow

_log = structlog.get_logger("llm_sidecar")


class RepositorySpendBackend:
    """Writes spend deltas to the repository and reads every user's totals back."""

    __slots__ = ("_store",)

    def __init__(self, store: SpendStore) -> None:
        self._store = store

    async def record(
        self, rows: Sequence[SpendRow], today: date
    ) -> list[tuple[str, str, int, int]]:
        deltas = [
            SpendDelta(
                r.day,
                r.tenant,
                r.user,
                r.model,
                r.cost_nanos,
                r.input_tokens,
                r.output_tokens,
                r.requests,
                r.unpriced_requests,
            )
            for r in rows
        ]
        try:
            totals = await self._store.record_spend(deltas, today)
        except RepositoryUnavailable as exc:
            raise ConnectionError(str(exc)) from None
        return [(t.tenant, t.user, t.day_nanos, t.month_nanos) for t in totals]


class SpendErrorReporter:
    """Counts and logs a failed spend flush; its deltas stay pending and are retried."""

    __slots__ = ("_metrics",)

    def __init__(self, metrics: SidecarMetrics) -> None:
        self._metrics = metrics

    def __call__(self, exc: BaseException) -> None:
        self._metrics.spend_flush_errors.inc()
        _log.warning("spend_flush_failed", error=str(exc)[:200])


def log_unwritten(rows: Sequence[SpendRow]) -> None:
    """At exit, spend that could not be written: one error line each, never silently lost."""
    for row in rows:
        _log.error(
            "spend_unwritten",
            day=row.day.isoformat(),
            tenant=row.tenant,
            user=row.user,
            model=row.model,
            cost_usd=usd(row.cost_nanos),
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            requests=row.requests,
        )
