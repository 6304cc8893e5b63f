"""The endpoint picker, the attempt and admission objects, the retry budget and hints."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from proxy.core.admission import Admission, Attempt
from proxy.core.breaker import BreakerState, CircuitBreaker, CircuitOpen
from proxy.core.endpoints import Endpoint, EndpointPool
from proxy.core.retry import RetryBudget, backoff, retry_hint
from proxy.core.spend import SpendHold
from proxy.core.usage import Usage
from tests.support.fakes import FakeCaller, FakeClock, spend_ledger


def _pool(weights: list[int], clock: FakeClock, threshold: int = 1) -> EndpointPool:
    endpoints = [
        Endpoint(
            "up",
            str(index),
            f"up/{index}",
            f"http://e{index}",
            None,
            weight,
            CircuitBreaker(
                f"up/{index}", failure_threshold=threshold, cooldown_seconds=30, clock=clock
            ),
        )
        for index, weight in enumerate(weights)
    ]
    return EndpointPool("up", endpoints, clock)


def test_sequential_picks_follow_the_weights_exactly() -> None:
    """Smooth weighted round-robin: 1,000 picks over weights 3:1 are 750 and 250."""
    pool = _pool([3, 1], FakeClock())
    picks = Counter(pool.pick().name for _ in range(1000))  # type: ignore[union-attr]
    assert picks == {"0": 750, "1": 250}


def test_least_in_flight_wins_among_equals() -> None:
    """With one endpoint busy, the idle one of the same weight takes the next attempt."""
    pool = _pool([1, 1], FakeClock())
    busy = pool.endpoints[0]
    busy.inflight = 3
    assert {pool.pick().name for _ in range(10)} == {"1"}  # type: ignore[union-attr]


def test_a_cooling_endpoint_is_skipped_until_its_time_then_used_again() -> None:
    """A 429's cool-down parks its endpoint while another is healthy, not after."""
    clock = FakeClock()
    pool = _pool([1, 1], clock)
    pool.cool_down(pool.endpoints[0], 5.0)
    assert {pool.pick().name for _ in range(6)} == {"1"}  # type: ignore[union-attr]
    clock.advance(5.0)
    assert {pool.pick().name for _ in range(6)} == {"0", "1"}  # type: ignore[union-attr]


def test_when_every_endpoint_cools_the_soonest_is_used() -> None:
    """A lone rate-limited key still serves (its 429 passes on) rather than refusing."""
    clock = FakeClock()
    pool = _pool([1, 1], clock)
    pool.cool_down(pool.endpoints[0], 9.0)
    pool.cool_down(pool.endpoints[1], 3.0)
    assert pool.pick() is pool.endpoints[1]


def test_the_upstream_is_open_only_when_every_endpoint_is() -> None:
    """One open endpoint leaves the upstream closed; both open it and 503 names the wait."""
    clock = FakeClock()
    pool = _pool([1, 1], clock)
    for endpoint in pool.endpoints:
        with Attempt(endpoint, 1) as attempt:
            attempt.judge(failed=True)
        expected = BreakerState.OPEN if endpoint is pool.endpoints[-1] else BreakerState.CLOSED
        assert pool.state() is expected
    assert pool.pick() is None
    assert pool.open_error().headers["Retry-After"] == "30"


def test_admission_refunds_unless_settled_once() -> None:
    """The exit refunds an unsettled reservation; a settled one is left alone, once."""

    class Reservation:
        def __init__(self) -> None:
            self.calls: list[object] = []

        def settle(self, actual_tokens: int) -> None:
            self.calls.append(actual_tokens)

        def refund(self) -> None:
            self.calls.append("refund")

    refunded, settled, kept = Reservation(), Reservation(), Reservation()
    ledger = spend_ledger()
    usage = Usage(3, 4)
    failing = Admission(SpendHold(ledger, FakeCaller(), ()))
    failing.reserve(refunded)
    with pytest.raises(RuntimeError), failing:
        raise RuntimeError
    with Admission(SpendHold(ledger, FakeCaller(), ())) as admission:
        admission.reserve(settled)
        admission.settle(usage, "m", 10)
        admission.settle(Usage(5, 4), "m", 10)
    with Admission(SpendHold(ledger, FakeCaller(), ())) as admission:
        admission.reserve(kept)
        admission.settle_estimate("m")
    refused_hold = SpendHold(ledger, FakeCaller(), ())
    with pytest.raises(RuntimeError), Admission(refused_hold):
        raise RuntimeError  # a rate limit refused it: no reservation, the hold still refunded
    assert (refunded.calls, settled.calls, kept.calls) == (["refund"], [7], [])
    assert refused_hold.done


class PickerMachine(RuleBasedStateMachine):
    """Random picks, verdicts, 429s and time: the picker never prefers a sick endpoint,
    and every attempt's permit and in-flight count comes back."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.pool = _pool([1, 2, 3], self.clock, threshold=2)
        self.attempts: list[Attempt] = []

    @rule(tried=st.sets(st.integers(0, 2)))
    def pick(self, tried: set[int]) -> None:
        excluded = [self.pool.endpoints[i] for i in tried]
        now = self.clock()
        chosen = self.pool.pick(excluded)
        candidates = [e for e in self.pool.endpoints if e not in excluded]
        healthy = [e for e in candidates if e.healthy(now)]
        if healthy:
            assert chosen in healthy
        elif any(e.breaker.retry_after() == 0 for e in candidates):
            assert chosen is not None
            assert chosen.breaker.retry_after() == 0
        else:
            assert chosen is None
        if chosen is not None:
            self.attempts.append(Attempt(chosen, 1))

    @precondition(lambda self: self.attempts)
    @rule(index=st.integers(0, 99), verdict=st.sampled_from(["ok", "fail", "429", "gone"]))
    def finish(self, index: int, verdict: str) -> None:
        attempt = self.attempts.pop(index % len(self.attempts))
        with attempt:
            if verdict == "ok":
                attempt.judge(failed=False)
            elif verdict == "fail":
                attempt.judge(failed=True)
            elif verdict == "429":
                self.pool.cool_down(attempt.endpoint, 2.0)
                attempt.judge(failed=False)

    @rule(seconds=st.sampled_from([0.5, 2.0, 31.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def in_flight_counts_balance(self) -> None:
        for endpoint in self.pool.endpoints:
            open_here = sum(1 for a in self.attempts if a.endpoint is endpoint)
            assert endpoint.inflight == open_here

    def teardown(self) -> None:
        for attempt in self.attempts:
            attempt.close()
        assert all(e.inflight == 0 for e in self.pool.endpoints)
        # Every permit came back: once their cool-downs pass, no breaker is stuck half-open.
        self.clock.advance(31.0)
        for endpoint in self.pool.endpoints:
            try:
                Attempt(endpoint, 1).close()
            except CircuitOpen:  # pragma: no cover - a leaked probe permit
                pytest.fail(f"{endpoint.name} holds a leaked permit")


TestPickerMachine = PickerMachine.TestCase


def test_the_budget_caps_retries_at_the_ratio_or_the_floor() -> None:
    """Over 10 s, retries may add 20 % of requests, and at least 3 a second."""
    clock = FakeClock()
    budget = RetryBudget(0.2, clock)
    for _ in range(1000):
        budget.request()
    allowed = sum(budget.try_retry() for _ in range(1000))
    assert allowed == 200
    clock.advance(10.0)  # the window has passed: only the floor is left
    assert sum(budget.try_retry() for _ in range(100)) == 30


def test_backoff_is_full_jitter_under_the_cap() -> None:
    """The wait grows 0.1, 0.2, 0.4 ... s times a uniform draw and never passes the cap."""
    assert backoff(1, 2.0, lambda: 1.0) == pytest.approx(0.1)
    assert backoff(3, 2.0, lambda: 0.5) == pytest.approx(0.2)
    assert backoff(10, 2.0, lambda: 1.0) == 2.0
    assert backoff(4, 2.0, lambda: 0.0) == 0.0


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ([("retry-after-ms", "1500"), ("Retry-After", "9")], 1.5),
        ([("Retry-After", "20")], 20.0),
        ([("x-ratelimit-reset-requests", "6m0s"), ("x-ratelimit-reset-tokens", "20ms")], 360.0),
        ([("x-ratelimit-reset-tokens", "1h2m3.5s")], 3723.5),
        ([("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")], None),
        ([("x-ratelimit-reset-requests", "soon")], None),
        ([], None),
    ],
)
def test_retry_hints_are_read_from_every_header_providers_use(
    headers: list[tuple[str, str]], seconds: float | None
) -> None:
    """retry-after-ms wins over Retry-After, which wins over OpenAI's reset durations."""
    assert retry_hint(headers) == seconds
