"""Per-upstream circuit breaker: fail fast while an upstream is down, probe it once to recover.

::

    closed ──N consecutive failures──> open ──cooldown over, next acquire──> half_open
      ▲                                  ▲                                       │
      └──────────── probe success ───────┼──────────── probe failure ────────────┘

One breaker per upstream, used on every request from one event loop (no lock: every
method is synchronous, so nothing interleaves inside it)::

    is_probe = breaker.acquire()          # raises CircuitOpen (503) while open
    try:
        response = await transport.send(...)
    except CancelledError:
        breaker.release(is_probe)         # neither verdict: the caller went away
        raise
    ...
    breaker.record_failure(is_probe)      # 5xx, reset, timeout, garbage
    breaker.record_success(is_probe)      # anything else the upstream answered

Every admitted request must end in exactly one of ``record_success``,
``record_failure`` or ``release``, passing back what ``acquire`` returned.

Decisions (see docs/circuit-breaker.md and ADR 0030):

- The open -> half_open move is lazy: it happens in the first ``acquire`` after the
  cooldown, and that call is the probe. No timer task; ``state`` reads ``open`` until then.
- A released probe leaves the breaker half-open with the permit free, so the next
  caller probes at once. Nothing was learnt about the upstream, so no transition.
- A probe permit expires after ``probe_timeout_seconds`` (default: the cooldown), after
  which the next caller becomes the probe: a leaked permit cannot pin half-open.
- Results of requests admitted as non-probes only count while closed: a late success
  cannot close an open breaker, a late failure cannot extend its cooldown.
- Any probe's success or failure decides half-open, even one whose permit expired: it
  is real evidence. A probe *release* frees the permit only when no other probe is
  unreported, so a stale probe can never free the permit of the live one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import StrEnum

from proxy.core.errors import ServiceUnavailable

PROBE_BUSY_RETRY_AFTER = 1.0
"""Retry-After (s) while the half-open probe is out: its answer is usually seconds away."""


class BreakerState(StrEnum):
    """The values are the Prometheus Enum states of ``llm_sidecar_circuit_breaker_state``."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


TransitionHook = Callable[[str, BreakerState, BreakerState], None]
"""``(upstream name, old state, new state)``: metrics and the transition log line."""

_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN


class CircuitOpen(ServiceUnavailable):
    """503 without contacting the upstream; ``Retry-After`` in whole seconds, at least 1."""

    code = "circuit_open"

    def __init__(self, upstream: str, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            f"Upstream {upstream!r} is failing and its circuit breaker is open; "
            f"retry in {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )
        self.upstream = upstream
        self.retry_after: float = max(0.0, retry_after)
        """Seconds until a request may be admitted (unrounded, for ``retry-after-ms``)."""


class CircuitBreaker:
    """The breaker of one upstream. Not thread-safe: one event loop owns it.

    ``on_transition`` is called after every state change, with the new state already
    in place; it must not raise (if it does, the change stands and the error propagates).
    It is not called for the initial ``closed`` state.
    """

    __slots__ = (
        "_clock",
        "_cooldown",
        "_failures",
        "_on_transition",
        "_open_until",
        "_permit_held",
        "_probe_deadline",
        "_probe_timeout",
        "_state",
        "_threshold",
        "_unreported_probes",
        "name",
    )

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        cooldown_seconds: float = 60.0,
        probe_timeout_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_transition: TransitionHook | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if not cooldown_seconds > 0:
            raise ValueError("cooldown_seconds must be positive")
        if probe_timeout_seconds is None:
            probe_timeout_seconds = cooldown_seconds
        if not probe_timeout_seconds > 0:
            raise ValueError("probe_timeout_seconds must be positive")
        self.name = name
        self._threshold = failure_threshold
        self._cooldown = float(cooldown_seconds)
        self._probe_timeout = float(probe_timeout_seconds)
        self._clock = clock
        self._on_transition = on_transition
        self._state = _CLOSED
        self._failures = 0
        """Consecutive failures while closed."""
        self._open_until = 0.0
        self._permit_held = False
        """Half-open only: a probe holds the permit (until ``_probe_deadline``)."""
        self._probe_deadline = 0.0
        self._unreported_probes = 0
        """Probes admitted and not yet reported, across episodes (stale ones included)."""

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def failure_threshold(self) -> int:
        return self._threshold

    @property
    def cooldown_seconds(self) -> float:
        return self._cooldown

    @property
    def probe_timeout_seconds(self) -> float:
        return self._probe_timeout

    def acquire(self) -> bool:
        """Admit a request; ``True`` when it is the half-open probe. Raises ``CircuitOpen``."""
        if self._state is _CLOSED:
            return False
        return self._acquire_when_not_closed()

    def record_success(self, is_probe: bool) -> None:
        """The upstream answered (any status that is not a failure, 4xx and 429 included)."""
        if is_probe:
            self._probe_reported()
            if self._state is _HALF_OPEN:
                self._close()
                return
        if self._state is _CLOSED:
            self._failures = 0

    def record_failure(self, is_probe: bool) -> None:
        """The upstream failed: connect error, reset, timeout, 500/502/503/504, garbage."""
        if is_probe:
            self._probe_reported()
            if self._state is _HALF_OPEN:
                self._open()
                return
        if self._state is _CLOSED:
            self._failures += 1
            if self._failures >= self._threshold:
                self._open()

    def release(self, is_probe: bool) -> None:
        """The request ended with no verdict (client gone, or rejected by the sidecar)."""
        if not is_probe:
            return
        self._probe_reported()
        if self._unreported_probes == 0:
            # Nobody else can be holding the permit, so the next caller may probe.
            self._permit_held = False

    def retry_after(self) -> float:
        """Seconds until ``acquire`` would admit someone (0 when it would now)."""
        if self._state is _CLOSED:
            return 0.0
        now = self._clock()
        if self._state is _OPEN:
            return max(0.0, self._open_until - now)
        if self._permit_held and now < self._probe_deadline:
            return PROBE_BUSY_RETRY_AFTER
        return 0.0

    def _acquire_when_not_closed(self) -> bool:
        now = self._clock()
        if self._state is _OPEN:
            if now < self._open_until:
                raise CircuitOpen(self.name, self._open_until - now)
            self._grant_probe(now)
            self._transition(_HALF_OPEN)
            return True
        if self._permit_held and now < self._probe_deadline:
            raise CircuitOpen(self.name, PROBE_BUSY_RETRY_AFTER)
        self._grant_probe(now)
        return True

    def _grant_probe(self, now: float) -> None:
        self._permit_held = True
        self._probe_deadline = now + self._probe_timeout
        self._unreported_probes += 1

    def _probe_reported(self) -> None:
        if self._unreported_probes > 0:
            self._unreported_probes -= 1

    def _open(self) -> None:
        self._open_until = self._clock() + self._cooldown
        self._failures = 0
        self._permit_held = False
        self._transition(_OPEN)

    def _close(self) -> None:
        self._failures = 0
        self._permit_held = False
        self._transition(_CLOSED)

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        if self._on_transition is not None:
            self._on_transition(self.name, old, new)
