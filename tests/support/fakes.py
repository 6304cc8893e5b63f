"""In-memory stand-ins shared by the unit and integration tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class FakeCaller:
    """What the authenticator hands the core: a tenant, its user and its limits."""

    tenant: str = "acme"
    user: str = "alice"
    rpm: int | None = None
    tpm: int | None = None
    burst: int | None = None
    allowed_upstreams: frozenset[str] | None = None


class FakeClock:
    """A monotonic clock that moves only when the test says so (``advance``, or set ``now``)."""

    __slots__ = ("now",)

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
