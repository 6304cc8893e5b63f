"""In-memory stand-ins shared by the unit and integration tests."""

from __future__ import annotations

from dataclasses import dataclass

from auth.adapters.repo_memory import InMemoryUserRepository
from proxy.core.spend import SpendLedger
from proxy.entrypoints.spend_bridge import RepositorySpendBackend


@dataclass(slots=True, frozen=True)
class FakeCaller:
    """What the authenticator hands the core: a tenant, its user and its limits."""

    tenant: str = "acme"
    user: str = "alice"
    rpm: int | None = None
    tpm: int | None = None
    burst: int | None = None
    allowed_upstreams: frozenset[str] | None = None
    tenant_budget_usd: float | None = None
    user_budget_usd: float | None = None
    budget_window: str = "month"


class FakeClock:
    """A monotonic clock that moves only when the test says so (``advance``, or set ``now``)."""

    __slots__ = ("now",)

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def spend_ledger(**options: object) -> SpendLedger:
    """A real spend ledger over an in-memory user repository (``options`` go to the ledger)."""
    return SpendLedger(RepositorySpendBackend(InMemoryUserRepository()), **options)  # type: ignore[arg-type]
