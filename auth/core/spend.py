"""Spend records of the user repository: what each tenant, user and model cost, per UTC day.

The repository keeps one row per (day, tenant, user, model) with running sums; a month is
the sum of its days. Sidecars add their deltas in batches (:meth:`SpendStore.record_spend`)
and read back everyone's totals in the same transaction, so every sidecar sharing the
repository shares the budgets. Costs are integer nano-dollars (no float drift).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SpendDelta:
    """What one sidecar adds to a (day, tenant, user, model) row."""

    day: date
    tenant: str
    user: str
    model: str
    cost_nanos: int
    input_tokens: int
    output_tokens: int
    requests: int
    unpriced_requests: int


@dataclass(frozen=True, slots=True)
class SpendTotal:
    """A user's spend so far today and this month, as the repository has it."""

    tenant: str
    user: str
    day_nanos: int
    month_nanos: int


@dataclass(frozen=True, slots=True)
class SpendLine:
    """One row of a spend report: a (tenant, user, model) over a window."""

    tenant: str
    user: str
    model: str
    cost_nanos: int
    input_tokens: int
    output_tokens: int
    requests: int
    unpriced_requests: int


def month_start(day: date) -> date:
    return day.replace(day=1)


class SpendStore(Protocol):
    async def record_spend(self, deltas: Sequence[SpendDelta], today: date) -> list[SpendTotal]:
        """Add ``deltas`` (may be empty) and return every user's totals for ``today`` and
        its month, in one transaction; raises ``RepositoryUnavailable``."""
        ...

    async def spend_report(self, since: date, tenant: str | None = None) -> list[SpendLine]:
        """Sums per (tenant, user, model) from ``since`` on, sorted; raises
        ``RepositoryUnavailable``."""
        ...
