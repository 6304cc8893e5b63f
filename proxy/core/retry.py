"""When a failed attempt may be tried again, how long to wait, and how many retries in all.

- :class:`RetryBudget` (Envoy's retry budget): retries may add at most ``ratio`` to the
  requests of the last ``WINDOW_SECONDS``, with a floor of ``MIN_RETRIES_PER_SECOND`` so
  a quiet sidecar can still retry. During a provider outage the load the sidecar sends
  is at most ``1 + ratio`` times what its callers send, never ``max_attempts`` times.
- :func:`backoff`: exponential, full jitter (AWS's "Exponential Backoff and Jitter"),
  capped.
- :func:`retry_hint`: the seconds a 429/503 asks for, from ``retry-after-ms``,
  ``Retry-After`` or OpenAI's ``x-ratelimit-reset-*`` (Go durations, ``6m0s``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

WINDOW_SECONDS = 10
MIN_RETRIES_PER_SECOND = 3
BACKOFF_BASE_SECONDS = 0.1
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


class RetryBudget:
    """Requests and retries per second over a sliding window of whole seconds."""

    __slots__ = ("_clock", "_minimum", "_ratio", "_requests", "_retries", "_second")

    def __init__(self, ratio: float, clock: Callable[[], float]) -> None:
        self._ratio = ratio
        self._clock = clock
        self._minimum = MIN_RETRIES_PER_SECOND * WINDOW_SECONDS
        self._requests = [0] * WINDOW_SECONDS
        self._retries = [0] * WINDOW_SECONDS
        self._second = int(clock())

    def _slot(self) -> int:
        second = int(self._clock())
        if second != self._second:
            # Clear the seconds that passed since the last call (all of them after a lull).
            for passed in range(self._second + 1, min(second, self._second + WINDOW_SECONDS) + 1):
                self._requests[passed % WINDOW_SECONDS] = 0
                self._retries[passed % WINDOW_SECONDS] = 0
            self._second = second
        return second % WINDOW_SECONDS

    def request(self) -> None:
        """Count a request (its first attempt)."""
        self._requests[self._slot()] += 1

    def try_retry(self) -> bool:
        """Spend one retry if the window allows it."""
        slot = self._slot()
        allowed = max(self._minimum, self._ratio * sum(self._requests))
        if sum(self._retries) + 1 > allowed:
            return False
        self._retries[slot] += 1
        return True


def backoff(retry: int, cap: float, random: Callable[[], float]) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...): full jitter, capped."""
    return random() * min(cap, BACKOFF_BASE_SECONDS * 2.0 ** (retry - 1))


def retry_hint(headers: Iterable[tuple[str, str]]) -> float | None:
    """Seconds the upstream asks a client to wait, or ``None`` when it says nothing."""
    after = after_ms = None
    resets: list[float] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "retry-after-ms":
            after_ms = _number(value)
        elif lowered == "retry-after":
            after = _number(value)  # an HTTP-date is rare from APIs: read as no hint
        elif lowered.startswith("x-ratelimit-reset-"):
            seconds = _duration(value)
            if seconds is not None:
                resets.append(seconds)
    if after_ms is not None:
        return after_ms / 1000
    if after is not None:
        return after
    return max(resets) if resets else None


def _number(value: str) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if 0 <= number < 1e9 else None


def _duration(value: str) -> float | None:
    """``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s`` (Go's format), or a bare number of seconds."""
    text = value.strip()
    plain = _number(text)
    if plain is not None:
        return plain
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
