"""What a request borrows, returned by structure rather than by every branch remembering.

A request borrows a token reservation and a spend hold for its whole life
(:class:`Admission`) and, per attempt, an endpoint's breaker permit and a place in its
in-flight count (:class:`Attempt`). Both are context managers whose exit gives back what was not
settled, the way a unit of work rolls back in ``__exit__``: a reservation nobody
settled is refunded, a permit nobody judged is released. Each settles at most once.
"""

from __future__ import annotations

from types import TracebackType

from proxy.core.endpoints import Endpoint
from proxy.core.ports import Reservation
from proxy.core.spend import SpendHold
from proxy.core.usage import Usage


class Admission:
    """The request's spend hold and token reservation: settled to the real usage and cost
    once, else both refunded.

    Opened on the spend hold, the first thing admitted; the reservation joins it with
    :meth:`reserve`, so a rate limit refusing the request still refunds the hold on exit.
    """

    __slots__ = ("_reservation", "settled", "spend")

    def __init__(self, spend: SpendHold) -> None:
        self.spend = spend
        self._reservation: Reservation | None = None
        self.settled = False

    def reserve(self, reservation: Reservation) -> None:
        """The request's token reservation, settled or refunded with the hold."""
        self._reservation = reservation

    def settle(
        self, usage: Usage, model: str | None, cost_nanos: int | None, *, caller_left: bool = False
    ) -> None:
        """The upstream's usage and its cost (``None``: no price) replace the reservations.

        ``caller_left``: the tokens are refunded (the contract's buckets refund a
        disconnect) while the money the upstream spent is still billed.
        """
        if not self.settled:
            self.settled = True
            if self._reservation is not None:
                if caller_left:
                    self._reservation.refund()
                else:
                    self._reservation.settle(usage.input_tokens + usage.output_tokens)
            self.spend.settle(model, cost_nanos, usage.input_tokens, usage.output_tokens)

    def settle_estimate(self, model: str | None) -> int:
        """A success that stated no usage: the estimates debited at admission stand (for a
        budgeted caller, the worst-case cost). Returns the nano-dollars charged."""
        if self.settled:
            return 0
        self.settled = True
        spend = self.spend
        charged = spend.reserved_nanos
        spend.settle(model, charged, 0, 0)
        return charged

    def refund(self) -> None:
        if not self.settled:
            self.settled = True
            if self._reservation is not None:
                self._reservation.refund()
            self.spend.refund()

    def __enter__(self) -> Admission:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.refund()


class Attempt:
    """One try on one endpoint: its breaker permit (until a verdict) and its in-flight count
    (until the exit). Raises ``CircuitOpen`` when the endpoint's breaker does not admit it.
    """

    __slots__ = ("_closed", "_judged", "endpoint", "number", "probe")

    def __init__(self, endpoint: Endpoint, number: int) -> None:
        self.probe = endpoint.breaker.acquire()
        self.endpoint = endpoint
        self.number = number
        """1 for the first attempt of the request, 2 for the first retry..."""
        self._judged = False
        self._closed = False
        endpoint.inflight += 1

    def judge(self, failed: bool) -> None:
        """The endpoint's verdict (a 5xx, reset or timeout fails it); the first one counts."""
        if not self._judged:
            self._judged = True
            breaker = self.endpoint.breaker
            if failed:
                breaker.record_failure(self.probe)
            else:
                breaker.record_success(self.probe)

    def judge_head(self, failed: bool) -> None:
        """A probe's verdict is its head: it must not hold the half-open permit for the
        minutes a stream may last. Other attempts are judged when the body ends."""
        if self.probe:
            self.judge(failed)

    def release(self) -> None:
        """No verdict (the caller left, a 429, a cancellation): the permit goes back."""
        if not self._judged:
            self._judged = True
            self.endpoint.breaker.release(self.probe)

    def close(self) -> None:
        """The attempt is over: a permit still unjudged goes back, the endpoint has one
        fewer in flight. Idempotent."""
        if not self._closed:
            self._closed = True
            self.release()
            self.endpoint.inflight -= 1

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()
