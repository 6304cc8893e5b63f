"""The endpoints of one upstream (keys, regions, orgs) and which one takes the next attempt.

Each endpoint has its own circuit breaker and its own 429 cool-down (until the time its
``Retry-After`` names). :meth:`EndpointPool.pick` chooses among the *healthy* ones (breaker
admitting, not cooling, not already tried by this request) by smooth weighted round-robin
(nginx's), so traffic follows the weights exactly, and among endpoints of equal weight
the least in flight takes the turn.

When no endpoint is healthy but some only cool down (rate limited, breaker closed), the
one that recovers first is used: a lone key keeps serving as it did before there were
several, and the 429 it may answer passes on. The upstream is open only when every
endpoint's breaker is.

An upstream with one endpoint (the default) skips all of it: one breaker check.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from proxy.core.breaker import BreakerState, CircuitBreaker, CircuitOpen

MAX_COOL_DOWN_SECONDS = 300.0
"""A 429 hint longer than this is read as this: a key is never parked for an hour."""


@dataclass(slots=True, eq=False)
class Endpoint:
    """One base URL and key of an upstream, with its live state."""

    upstream: str
    name: str
    key: str
    """The transport's pool key (``upstream`` alone for a lone endpoint)."""
    origin: str
    credential: tuple[str, str] | None = field(repr=False)
    """``(header, value)`` carrying the provider key, as the upstream's kind wants it."""
    weight: int
    breaker: CircuitBreaker
    cooling_until: float = 0.0
    inflight: int = 0
    current_weight: int = 0
    """Smooth weighted round-robin state."""

    def healthy(self, now: float) -> bool:
        return self.cooling_until <= now and self.breaker.retry_after() == 0.0


class EndpointPool:
    """The endpoints of one upstream; not thread-safe (one event loop owns it)."""

    __slots__ = ("_clock", "_lone", "endpoints", "upstream")

    def __init__(self, upstream: str, endpoints: Sequence[Endpoint], clock: Callable[[], float]):
        if not endpoints:
            raise ValueError(f"upstream {upstream!r} has no endpoints")
        self.upstream = upstream
        self.endpoints = tuple(endpoints)
        self._clock = clock
        self._lone = self.endpoints[0] if len(self.endpoints) == 1 else None

    def pick(self, tried: Collection[Endpoint] = ()) -> Endpoint | None:
        """The endpoint for the next attempt; ``None`` when every untried one is open."""
        lone = self._lone
        if lone is not None:
            return None if lone in tried or lone.breaker.retry_after() > 0.0 else lone
        now = self._clock()
        healthy = [e for e in self.endpoints if e not in tried and e.healthy(now)]
        if healthy:
            return _weighted_choice(healthy)
        cooling = [e for e in self.endpoints if e not in tried and e.breaker.retry_after() == 0.0]
        return min(cooling, key=lambda e: e.cooling_until) if cooling else None

    def cool_down(self, endpoint: Endpoint, seconds: float) -> None:
        """The endpoint answered 429: skip it for ``seconds`` while others are healthy."""
        until = self._clock() + min(max(seconds, 0.0), MAX_COOL_DOWN_SECONDS)
        endpoint.cooling_until = max(endpoint.cooling_until, until)

    def state(self) -> BreakerState:
        """Closed while any endpoint is closed; open only when every endpoint is."""
        states = {e.breaker.state for e in self.endpoints}
        for state in (BreakerState.CLOSED, BreakerState.HALF_OPEN):
            if state in states:
                return state
        return BreakerState.OPEN

    def open_error(self) -> CircuitOpen:
        """The 503 for a request no endpoint can take, with the soonest recovery."""
        wait = min(e.breaker.retry_after() for e in self.endpoints)
        return CircuitOpen(self.upstream, wait)


def _weighted_choice(candidates: list[Endpoint]) -> Endpoint:
    """Smooth weighted round-robin, then the least in flight among endpoints of that weight.

    Swapping round-robin state with an equal-weight peer keeps each weight's share exact
    while letting an idle endpoint take the turn of a busy twin.
    """
    if len(candidates) == 1:
        return candidates[0]
    total = 0
    chosen = candidates[0]
    for endpoint in candidates:
        endpoint.current_weight += endpoint.weight
        total += endpoint.weight
        if endpoint.current_weight > chosen.current_weight:
            chosen = endpoint
    for twin in candidates:
        if twin.weight == chosen.weight and twin.inflight < chosen.inflight:
            twin.current_weight, chosen.current_weight = chosen.current_weight, twin.current_weight
            chosen = twin
    chosen.current_weight -= total
    return chosen
