"""A continuously refilling token bucket whose level may be driven below zero.

::

    bucket = TokenBucket(rate_per_second=10.0, capacity=600.0)   # starts full
    if bucket.try_take(1.0):        # take only if that much is there (request budget)
        ...
    bucket.debit(estimate)          # take regardless: may go negative (token budget)
    bucket.credit(refund)           # give back, never above capacity
    bucket.seconds_until(1.0)       # 0.0 when the level is already >= 1
    bucket.seconds_until_positive() # 0.0 when the level is already > 0

Attributes:
    rate: tokens added per second.
    capacity: the most the bucket ever holds.

Refill is lazy (computed from the clock on each call), so an idle bucket costs
nothing. Every method takes an optional ``now`` so one caller can read the clock
once and update several buckets at the same instant. No lock: all methods are
synchronous, so nothing interleaves inside them on one event loop.
"""

from __future__ import annotations

import time

from proxy.core.ports import Clock


class TokenBucket:
    """Refills at ``rate_per_second`` up to ``capacity``; starts full."""

    __slots__ = ("_clock", "_level", "_stamp", "capacity", "rate")

    def __init__(
        self, rate_per_second: float, capacity: float, clock: Clock = time.monotonic
    ) -> None:
        if rate_per_second <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = float(rate_per_second)
        self.capacity = float(capacity)
        self._clock = clock
        self._level = self.capacity
        self._stamp = clock()

    def _refill(self, now: float | None) -> float:
        if now is None:
            now = self._clock()
        elapsed = now - self._stamp
        if elapsed > 0:
            level = self._level + elapsed * self.rate
            self._level = level if level < self.capacity else self.capacity
            self._stamp = now
        return self._level

    def level(self, now: float | None = None) -> float:
        """The current level (negative while a debit is being paid back)."""
        return self._refill(now)

    def try_take(self, amount: float = 1.0, now: float | None = None) -> bool:
        """Take ``amount`` if at least that much is there; otherwise change nothing."""
        if self._refill(now) >= amount:
            self._level -= amount
            return True
        return False

    def debit(self, amount: float, now: float | None = None) -> None:
        """Take ``amount`` unconditionally; the level may go below zero."""
        self._refill(now)
        self._level -= amount

    def credit(self, amount: float, now: float | None = None) -> None:
        """Give ``amount`` back; whatever would overflow the capacity is lost."""
        level = self._refill(now) + amount
        self._level = level if level < self.capacity else self.capacity

    def seconds_until(self, amount: float, now: float | None = None) -> float:
        """Seconds until the level is at least ``amount`` (0.0 if it already is)."""
        missing = amount - self._refill(now)
        return missing / self.rate if missing > 0 else 0.0

    def seconds_until_positive(self, now: float | None = None) -> float:
        """Seconds until the level is above zero; ``0.0`` if it already is.

        At exactly the returned instant the level is zero, so callers that must see
        a strictly positive level round the wait up (as the 429 headers do).
        """
        level = self._refill(now)
        return -level / self.rate if level <= 0 else 0.0

    def seconds_until_full(self, now: float | None = None) -> float:
        """Seconds until the bucket is back at capacity (0.0 when it is)."""
        return (self.capacity - self._refill(now)) / self.rate

    def reconfigure(
        self, rate_per_second: float, capacity: float, now: float | None = None
    ) -> None:
        """Adopt new limits, keeping the balance earned so far.

        Time up to ``now`` refills at the old rate; the level is then kept as is
        (a debt stays a debt, a raised limit grants no free burst) and only clipped
        when the new capacity is lower.
        """
        if rate_per_second <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        level = self._refill(now)
        self.rate = float(rate_per_second)
        self.capacity = float(capacity)
        if level > self.capacity:
            self._level = self.capacity
