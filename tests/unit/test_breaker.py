"""The circuit breaker on a fake clock: every transition, then a Hypothesis state machine."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from proxy.core.breaker import (
    PROBE_BUSY_RETRY_AFTER,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
)
from proxy.core.errors import ServiceUnavailable
from tests.support.fakes import FakeClock

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


@dataclass
class Transitions:
    """Records every ``on_transition`` call."""

    seen: list[tuple[str, BreakerState, BreakerState]] = field(default_factory=list)

    def __call__(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self.seen.append((name, old, new))


def make(
    threshold: int = 3, cooldown: float = 10.0, probe_timeout: float | None = None
) -> tuple[CircuitBreaker, FakeClock, Transitions]:
    clock, hook = FakeClock(), Transitions()
    breaker = CircuitBreaker(
        "groq",
        failure_threshold=threshold,
        cooldown_seconds=cooldown,
        probe_timeout_seconds=probe_timeout,
        clock=clock,
        on_transition=hook,
    )
    return breaker, clock, hook


def fail_times(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        breaker.record_failure(breaker.acquire())


def open_breaker() -> tuple[CircuitBreaker, FakeClock, Transitions]:
    breaker, clock, hook = make()
    fail_times(breaker, 3)
    assert breaker.state is OPEN
    return breaker, clock, hook


def test_state_values_are_the_prometheus_enum_states() -> None:
    """The enum values are exactly the states docs/reference.md names for the Enum metric."""
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]


def test_closed_admits_without_probe_and_reports_nothing() -> None:
    """A new breaker is closed, admits as non-probe and has no Retry-After."""
    breaker, _, hook = make()
    assert breaker.state is CLOSED
    assert breaker.acquire() is False
    breaker.record_success(False)
    assert breaker.retry_after() == 0.0
    assert hook.seen == []


def test_opens_after_threshold_consecutive_failures() -> None:
    """N consecutive failures open the breaker, reported once as closed -> open."""
    breaker, _, hook = make(threshold=3)
    fail_times(breaker, 2)
    assert breaker.state is CLOSED
    fail_times(breaker, 1)
    assert breaker.state is OPEN
    assert hook.seen == [("groq", CLOSED, OPEN)]


def test_success_resets_the_consecutive_count() -> None:
    """A success between failures means the failures are not consecutive."""
    breaker, _, _ = make(threshold=3)
    fail_times(breaker, 2)
    breaker.record_success(breaker.acquire())
    fail_times(breaker, 2)
    assert breaker.state is CLOSED
    fail_times(breaker, 1)
    assert breaker.state is OPEN


def test_release_while_closed_neither_counts_nor_resets() -> None:
    """A released request (client gone) is no verdict: the failure streak goes on."""
    breaker, _, _ = make(threshold=3)
    fail_times(breaker, 2)
    breaker.release(breaker.acquire())
    fail_times(breaker, 1)
    assert breaker.state is OPEN


def test_open_rejects_with_cooldown_left_as_retry_after() -> None:
    """While open, acquire raises a 503 CircuitOpen whose Retry-After is the cooldown left."""
    breaker, clock, _ = open_breaker()
    clock.advance(2.5)
    with pytest.raises(CircuitOpen) as caught:
        breaker.acquire()
    error = caught.value
    assert isinstance(error, ServiceUnavailable)
    assert (error.status, error.code) == (503, "circuit_open")
    assert error.retry_after == pytest.approx(7.5)
    assert error.headers["Retry-After"] == "8"
    assert breaker.retry_after() == pytest.approx(7.5)
    assert breaker.state is OPEN


def test_retry_after_header_is_at_least_one_second() -> None:
    """A cooldown with a sliver left still says Retry-After: 1, never 0."""
    breaker, clock, _ = open_breaker()
    clock.advance(9.999)
    with pytest.raises(CircuitOpen) as caught:
        breaker.acquire()
    assert caught.value.headers["Retry-After"] == "1"


def test_first_acquire_after_cooldown_is_the_only_probe() -> None:
    """After the cooldown one caller becomes the probe; the others get a short Retry-After."""
    breaker, clock, hook = open_breaker()
    clock.advance(10.0)
    assert breaker.state is OPEN  # the move to half-open is lazy
    assert breaker.acquire() is True
    assert breaker.state is HALF_OPEN
    assert hook.seen[-1] == ("groq", OPEN, HALF_OPEN)
    for _ in range(50):
        with pytest.raises(CircuitOpen) as caught:
            breaker.acquire()
        assert caught.value.retry_after == PROBE_BUSY_RETRY_AFTER
        assert caught.value.headers["Retry-After"] == "1"
    assert breaker.retry_after() == PROBE_BUSY_RETRY_AFTER


def test_probe_success_closes() -> None:
    """A successful probe closes the breaker and the failure count starts from zero."""
    breaker, clock, hook = open_breaker()
    clock.advance(10.0)
    breaker.record_success(breaker.acquire())
    assert breaker.state is CLOSED
    assert hook.seen[-1] == ("groq", HALF_OPEN, CLOSED)
    fail_times(breaker, 2)
    assert breaker.state is CLOSED


def test_probe_failure_reopens_with_fresh_cooldown() -> None:
    """A failed probe re-opens the breaker for a whole new cooldown."""
    breaker, clock, hook = open_breaker()
    clock.advance(10.0)
    assert breaker.acquire() is True
    clock.advance(3.0)
    breaker.record_failure(True)
    assert breaker.state is OPEN
    assert hook.seen[-1] == ("groq", HALF_OPEN, OPEN)
    assert breaker.retry_after() == pytest.approx(10.0)
    clock.advance(9.9)
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    clock.advance(0.1)
    assert breaker.acquire() is True


def test_released_probe_frees_the_permit_and_stays_half_open() -> None:
    """A cancelled probe hands the permit to the next caller without any transition."""
    breaker, clock, hook = open_breaker()
    clock.advance(10.0)
    breaker.release(breaker.acquire())
    assert breaker.state is HALF_OPEN
    assert breaker.retry_after() == 0.0
    transitions_before = len(hook.seen)
    assert breaker.acquire() is True
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    assert len(hook.seen) == transitions_before


def test_probe_permit_expires_after_probe_timeout() -> None:
    """A probe that never answers loses its permit after the probe timeout."""
    breaker, clock, _ = make(cooldown=10.0, probe_timeout=4.0)
    fail_times(breaker, 3)
    clock.advance(10.0)
    assert breaker.acquire() is True
    clock.advance(3.9)
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    clock.advance(0.1)
    assert breaker.acquire() is True
    assert breaker.state is HALF_OPEN


def test_probe_timeout_defaults_to_the_cooldown() -> None:
    """Without an explicit probe timeout the permit lives as long as the cooldown."""
    breaker, _, _ = make(cooldown=7.0)
    assert breaker.probe_timeout_seconds == 7.0


def test_stale_probe_release_does_not_free_the_live_permit() -> None:
    """An expired probe that is released later cannot let a second probe in beside the live one."""
    breaker, clock, _ = make(cooldown=10.0, probe_timeout=2.0)
    fail_times(breaker, 3)
    clock.advance(10.0)
    assert breaker.acquire() is True  # stale-to-be
    clock.advance(2.0)
    assert breaker.acquire() is True  # the live probe
    breaker.release(True)  # indistinguishable: treated as the stale one
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    breaker.release(True)  # now no probe is unreported
    assert breaker.acquire() is True


def test_stale_probe_verdict_decides_half_open() -> None:
    """A late answer from an expired probe is real evidence and closes the breaker."""
    breaker, clock, _ = make(cooldown=10.0, probe_timeout=2.0)
    fail_times(breaker, 3)
    clock.advance(10.0)
    breaker.acquire()
    clock.advance(2.0)
    breaker.acquire()
    breaker.record_success(True)
    assert breaker.state is CLOSED
    breaker.record_failure(True)  # the other probe, landing in closed: an ordinary failure
    assert breaker.state is CLOSED


def test_late_success_does_not_close_an_open_breaker() -> None:
    """A request admitted while closed that succeeds after the breaker opened changes nothing."""
    breaker, _, hook = make(threshold=3)
    slow = breaker.acquire()
    fail_times(breaker, 3)
    breaker.record_success(slow)
    assert breaker.state is OPEN
    assert hook.seen == [("groq", CLOSED, OPEN)]


def test_late_failure_does_not_extend_the_cooldown() -> None:
    """A late failure from before the breaker opened does not restart the cooldown."""
    breaker, clock, _ = make(threshold=3, cooldown=10.0)
    slow = breaker.acquire()
    fail_times(breaker, 3)
    clock.advance(9.0)
    breaker.record_failure(slow)
    assert breaker.retry_after() == pytest.approx(1.0)


def test_late_non_probe_results_do_not_decide_half_open() -> None:
    """Only the probe's verdict leaves half-open; late non-probe results are ignored."""
    breaker, clock, _ = make(threshold=3)
    slow_ok, slow_bad = breaker.acquire(), breaker.acquire()
    fail_times(breaker, 3)
    clock.advance(10.0)
    assert breaker.acquire() is True
    breaker.record_success(slow_ok)
    breaker.record_failure(slow_bad)
    assert breaker.state is HALF_OPEN
    with pytest.raises(CircuitOpen):
        breaker.acquire()


def test_threshold_of_one_opens_on_first_failure() -> None:
    """The smallest threshold opens on a single failure."""
    breaker, _, _ = make(threshold=1)
    fail_times(breaker, 1)
    assert breaker.state is OPEN


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"cooldown_seconds": 0.0},
        {"cooldown_seconds": float("nan")},
        {"probe_timeout_seconds": -1.0},
    ],
)
def test_rejects_nonsense_settings(kwargs: dict[str, Any]) -> None:
    """Zero, negative or NaN thresholds and durations are refused at construction."""
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker("x", **kwargs)


def test_hook_sees_the_new_state_in_place() -> None:
    """When the hook runs, ``state`` already reports the new state (metrics read it)."""
    seen: list[BreakerState] = []
    breaker = CircuitBreaker(
        "openai", failure_threshold=1, on_transition=lambda _n, _o, _new: seen.append(breaker.state)
    )
    breaker.record_failure(breaker.acquire())
    assert seen == [OPEN]


def test_repr_names_upstream_and_state() -> None:
    """The repr is useful in logs and holds nothing secret."""
    breaker, _, _ = make()
    assert repr(breaker) == "CircuitBreaker('groq', state=closed)"


# --- the state machine --------------------------------------------------------------------

OUTCOMES = st.sampled_from(["success", "failure", "release"])
ALLOWED_EDGES = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED), (HALF_OPEN, OPEN)}


@dataclass
class Ticket:
    """One admitted request the machine has yet to finish."""

    is_probe: bool
    admitted_at: float


class BreakerMachine(RuleBasedStateMachine):
    """Random interleavings of admissions, verdicts, releases and time against the invariants."""

    @initialize(
        threshold=st.integers(1, 3),
        cooldown=st.sampled_from([1.0, 5.0]),
        timeout_share=st.sampled_from([0.25, 0.5, 1.0]),
    )
    def setup(self, threshold: int, cooldown: float, timeout_share: float) -> None:
        self.clock = FakeClock()
        self.hook = Transitions()
        self.threshold, self.cooldown = threshold, cooldown
        self.probe_timeout = cooldown * timeout_share
        self.breaker = CircuitBreaker(
            "up",
            failure_threshold=threshold,
            cooldown_seconds=cooldown,
            probe_timeout_seconds=self.probe_timeout,
            clock=self.clock,
            on_transition=self.hook,
        )
        self.tickets: list[Ticket] = []
        self.streak = 0  # failures recorded while closed since the last closed success
        self.reported = 0

    def _new_transitions(self) -> list[tuple[BreakerState, BreakerState]]:
        fresh = self.hook.seen[self.reported :]
        self.reported = len(self.hook.seen)
        return [(old, new) for _, old, new in fresh]

    def _live_probes(self) -> list[Ticket]:
        now = self.clock()
        return [t for t in self.tickets if t.is_probe and now < t.admitted_at + self.probe_timeout]

    @rule()
    def acquire(self) -> None:
        self._acquire()

    @rule(callers=st.integers(2, 8))
    def acquire_burst(self, callers: int) -> None:
        """Many callers at the same instant, as when a cooldown ends under load."""
        for _ in range(callers):
            self._acquire()

    def _acquire(self) -> bool | None:
        """Acquire and check the outcome; the ticket's ``is_probe``, or None when rejected."""
        before = self.breaker.state
        live_before = self._live_probes()
        rejected: CircuitOpen | None = None
        try:
            is_probe = self.breaker.acquire()
        except CircuitOpen as exc:
            rejected = exc
        if rejected is not None:
            assert before in (OPEN, HALF_OPEN)
            assert 0 < rejected.retry_after <= self.cooldown + 1e-9
            assert int(rejected.headers["Retry-After"]) >= 1
            assert self._new_transitions() == []
            return None
        if is_probe:
            assert live_before == [], "a second probe was admitted beside a live one"
            expected = [(OPEN, HALF_OPEN)] if before is OPEN else []
            assert self._new_transitions() == expected
        else:
            assert before is CLOSED
            assert self._new_transitions() == []
        self.tickets.append(Ticket(is_probe, self.clock()))
        return is_probe

    @precondition(lambda self: bool(self.tickets))
    @rule(data=st.data(), outcome=OUTCOMES)
    def finish(self, data: st.DataObject, outcome: str) -> None:
        self._finish(self.tickets.pop(data.draw(st.integers(0, len(self.tickets) - 1))), outcome)

    @precondition(lambda self: any(t.is_probe for t in self.tickets))
    @rule(oldest=st.booleans(), outcome=OUTCOMES)
    def finish_probe(self, oldest: bool, outcome: str) -> None:
        """Probes are the interesting tickets (stale, expired, racing), so finish them often."""
        probes = [t for t in self.tickets if t.is_probe]
        ticket = probes[0] if oldest else probes[-1]
        self.tickets.remove(ticket)
        self._finish(ticket, outcome)

    def _finish(self, ticket: Ticket, outcome: str) -> None:
        before = self.breaker.state
        if outcome == "success":
            self.breaker.record_success(ticket.is_probe)
        elif outcome == "failure":
            self.breaker.record_failure(ticket.is_probe)
        else:
            self.breaker.release(ticket.is_probe)
        moves = self._new_transitions()

        if before is CLOSED and outcome != "release":
            self.streak = 0 if outcome == "success" else self.streak + 1
            if self.streak == self.threshold:
                assert moves == [(CLOSED, OPEN)]
                self.streak = 0
            else:
                assert moves == []
        elif before is HALF_OPEN and ticket.is_probe and outcome == "success":
            assert moves == [(HALF_OPEN, CLOSED)]
            self.streak = 0
        elif before is HALF_OPEN and ticket.is_probe and outcome == "failure":
            assert moves == [(HALF_OPEN, OPEN)]
            assert self.breaker.retry_after() == pytest.approx(self.cooldown)
        else:
            assert moves == [], "a late or released result changed the state"

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 5.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.breaker.state is HALF_OPEN)
    @rule()
    def half_open_is_never_stuck(self) -> None:
        """Within one probe timeout a caller is admitted as the probe again."""
        self.clock.advance(self.probe_timeout)
        assert self._acquire() is True

    @invariant()
    def transitions_match_state(self) -> None:
        assert self.reported == len(self.hook.seen), "a transition no rule accounted for"
        for name, old, new in self.hook.seen:
            assert name == "up"
            assert (old, new) in ALLOWED_EDGES
        chain = [CLOSED, *(new for _, _, new in self.hook.seen)]
        assert all(new is not old for old, new in itertools.pairwise(chain))
        assert [old for _, old, _ in self.hook.seen] == chain[:-1]
        assert chain[-1] is self.breaker.state

    @invariant()
    def closed_streak_below_threshold(self) -> None:
        if self.breaker.state is CLOSED:
            assert self.streak < self.threshold


BreakerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None, database=None
)
TestBreakerMachine = BreakerMachine.TestCase
