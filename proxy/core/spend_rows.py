"""What the spend ledger writes, and the port it writes through (``SpendBackend``).

A ``SpendRow`` is one (UTC day, tenant, user, model) delta of settled spend; the backend
adds a batch of them and answers every user's day and month totals in the same step
(``proxy.core.spend_batch``). Scopes are the budgets those totals are summed into: a
tenant's or a user's, per window (``day`` or ``month``) and period start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

TENANT, USER = 0, 1
ROW_FIELDS = 5  # cost_nanos, input_tokens, output_tokens, requests, unpriced_requests
MAX_MODEL_NAME = 200
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


def period_start(window: str, today: date) -> date:
    """The first day of ``window`` (``day`` or ``month``) that holds ``today``."""
    return today if window == "day" else today.replace(day=1)
