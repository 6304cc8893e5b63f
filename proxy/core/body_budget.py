"""How many request-body bytes the sidecar holds at once, across every request.

``MAX_BODY_BYTES`` bounds one body; this bounds their sum, so that ``MAX_INFLIGHT``
requests each carrying the largest allowed body cannot take the container past its
memory limit (and every stream of the pod with it). A request whose body does not fit
gets an immediate 503 ``overloaded``, like one over ``MAX_INFLIGHT``.
"""

from __future__ import annotations

from proxy.core.errors import ServiceUnavailable


class BodyBudget:
    """The shared byte budget; requests draw on it through a :class:`BodyHold`."""

    __slots__ = ("capacity", "held")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        """Bytes held by every request in flight (a gauge for tests and the soak)."""

    def hold(self) -> BodyHold:
        return BodyHold(self)


class BodyHold:
    """One request's share: taken as its body arrives, given back once when it ends."""

    __slots__ = ("_budget", "taken")

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.taken = 0

    def take(self, size: int) -> None:
        """Hold ``size`` more bytes; raises 503 ``overloaded`` when the budget is spent."""
        budget = self._budget
        if budget.held + size > budget.capacity:
            raise ServiceUnavailable(
                "Too many request bytes in flight; retry shortly.",
                code="overloaded",
                headers={"Retry-After": "1"},
            )
        budget.held += size
        self.taken += size

    def release(self) -> None:
        self._budget.held -= self.taken
        self.taken = 0
