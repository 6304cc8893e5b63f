"""Per-tenant admission: a request budget and an LLM-token budget, in this process.

Each tenant has two :class:`TokenBucket` s refilling at (per-minute figure)/60 per
second. The request budget holds at most ``min(rpm, burst)`` (at least 1), the token
budget at most ``tpm``. A request is admitted while the token budget is above zero
and one request is available; its token estimate is debited then (the balance may
go negative) and the :class:`LocalReservation` later corrects it::

    reservation = await limiter.admit(caller, estimated_tokens)   # or RateLimited
    ...
    reservation.settle(actual_tokens)   # the upstream's usage; or
    reservation.refund()                # error, timeout, client gone

The first of ``settle``/``refund`` wins; later calls do nothing. A refund returns the
tokens only: the request was made, so its request slot stays spent.

:func:`rate_limited` builds the 429 with its headers; the Redis adapter shares it.
"""

from __future__ import annotations

import math
import time

from proxy.core.errors import RateLimited
from proxy.core.ports import Caller, Clock
from proxy.core.token_bucket import TokenBucket

SDK_MAX_RETRY_AFTER_MS = 120_000
"""The longest wait the openai SDK honours; past it the 429 says ``x-should-retry: false``."""


def request_capacity(rpm: int, burst: int | None) -> int:
    """How many requests the request budget holds: ``rpm``, lowered by ``burst``, >= 1."""
    if burst is None or burst >= rpm:
        return rpm
    return burst if burst > 1 else 1


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI's ``x-ratelimit-reset-*`` headers write it.

    Go ``time.Duration`` style, rounded up to the millisecond: ``0s``, ``250ms``,
    ``1s``, ``1.5s``, ``6m0s``, ``1h2m3.25s``.
    """
    ms = math.ceil(seconds * 1000) if seconds > 0 else 0
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rate_limited(
    tenant: str,
    *,
    limit: str,
    wait_seconds: float,
    rpm: int,
    requests_level: float,
    requests_reset: float,
    tpm: int,
    tokens_level: float,
    tokens_reset: float,
) -> RateLimited:
    """The 429 for a rejected request; built only on rejection (not on the hot path).

    ``retry-after-ms`` is one millisecond past the wait, so a client that sleeps
    exactly that long finds the budget strictly above the threshold; ``Retry-After``
    is the same figure in whole seconds, rounded up, at least 1.
    """
    wait_ms = int(wait_seconds * 1000) + 1
    headers = {
        "Retry-After": str(max(1, -(-wait_ms // 1000))),
        "retry-after-ms": str(wait_ms),
        "x-ratelimit-limit-requests": str(rpm),
        "x-ratelimit-remaining-requests": str(max(0, math.floor(requests_level))),
        "x-ratelimit-reset-requests": format_reset(requests_reset),
        "x-ratelimit-limit-tokens": str(tpm),
        "x-ratelimit-remaining-tokens": str(max(0, math.floor(tokens_level))),
        "x-ratelimit-reset-tokens": format_reset(tokens_reset),
    }
    if wait_ms > SDK_MAX_RETRY_AFTER_MS:
        headers["x-should-retry"] = "false"
    if limit == "requests":
        what = f"requests per minute (limit {rpm})"
    else:
        what = f"tokens per minute (limit {tpm})"
    return RateLimited(
        f"Rate limit reached for tenant {tenant!r} on {what}. "
        f"Please try again in {format_reset(wait_seconds)}.",
        limit=limit,
        headers=headers,
    )


def rejected(
    tenant: str,
    *,
    rpm: int,
    requests_capacity: float,
    requests_level: float,
    tpm: int,
    tokens_level: float,
) -> RateLimited:
    """The 429 for budgets at these levels; ``limit`` names the one with the longer wait."""
    requests_rate, tokens_rate = rpm / 60.0, tpm / 60.0
    requests_wait = (1.0 - requests_level) / requests_rate if requests_level < 1.0 else 0.0
    tokens_wait = -tokens_level / tokens_rate if tokens_level <= 0 else 0.0
    tokens_short = tokens_level <= 0 and tokens_wait >= requests_wait
    return rate_limited(
        tenant,
        limit="tokens" if tokens_short else "requests",
        wait_seconds=max(requests_wait, tokens_wait),
        rpm=rpm,
        requests_level=requests_level,
        requests_reset=max(0.0, requests_capacity - requests_level) / requests_rate,
        tpm=tpm,
        tokens_level=tokens_level,
        tokens_reset=max(0.0, tpm - tokens_level) / tokens_rate,
    )


class LocalReservation:
    """Tokens debited from one in-process bucket; corrected once, then inert."""

    __slots__ = ("_amount", "_bucket")

    def __init__(self, bucket: TokenBucket, amount: int) -> None:
        self._bucket: TokenBucket | None = bucket
        self._amount = amount

    def settle(self, actual_tokens: int) -> None:
        bucket = self._bucket
        if bucket is None:
            return
        self._bucket = None
        delta = self._amount - max(0, actual_tokens)
        if delta > 0:
            bucket.credit(delta)
        elif delta < 0:
            bucket.debit(-delta)

    def refund(self) -> None:
        bucket = self._bucket
        if bucket is None:
            return
        self._bucket = None
        if self._amount:
            bucket.credit(self._amount)


class _TenantBuckets:
    """One tenant's two budgets and the limits they were built from."""

    __slots__ = ("burst", "requests", "rpm", "tokens", "tpm")

    def __init__(self, rpm: int, tpm: int, burst: int | None, clock: Clock) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.burst = burst
        self.requests = TokenBucket(rpm / 60.0, request_capacity(rpm, burst), clock)
        self.tokens = TokenBucket(tpm / 60.0, tpm, clock)

    def adopt(self, rpm: int, tpm: int, burst: int | None, now: float) -> None:
        self.rpm, self.tpm, self.burst = rpm, tpm, burst
        self.requests.reconfigure(rpm / 60.0, request_capacity(rpm, burst), now)
        self.tokens.reconfigure(tpm / 60.0, tpm, now)


class InProcessRateLimiter:
    """``RateLimiter`` port with buckets in this process (one sidecar, or Redis down).

    State is keyed by tenant name; tenants come from the repository, so it is bounded.
    """

    __slots__ = ("_clock", "_default_rpm", "_default_tpm", "_tenants")

    def __init__(
        self, *, default_rpm: int, default_tpm: int, clock: Clock = time.monotonic
    ) -> None:
        if default_rpm < 1 or default_tpm < 1:
            raise ValueError("default limits must be at least 1")
        self._default_rpm = default_rpm
        self._default_tpm = default_tpm
        self._clock = clock
        self._tenants: dict[str, _TenantBuckets] = {}

    async def admit(self, caller: Caller, estimated_tokens: int) -> LocalReservation:
        return self.admit_now(caller, estimated_tokens)

    async def aclose(self) -> None:
        """Nothing to release: the buckets are this process's memory."""

    def admit_now(self, caller: Caller, estimated_tokens: int) -> LocalReservation:
        """Synchronous ``admit``: also what the Redis adapter falls back to."""
        rpm = caller.rpm or self._default_rpm
        tpm = caller.tpm or self._default_tpm
        burst = caller.burst
        now = self._clock()
        state = self._tenants.get(caller.tenant)
        if state is None:
            state = self._tenants[caller.tenant] = _TenantBuckets(rpm, tpm, burst, self._clock)
        elif rpm != state.rpm or tpm != state.tpm or burst != state.burst:
            state.adopt(rpm, tpm, burst, now)
        tokens = state.tokens
        if tokens.level(now) > 0 and state.requests.try_take(1.0, now):
            estimate = estimated_tokens if estimated_tokens > 0 else 0
            tokens.debit(estimate, now)
            return LocalReservation(tokens, estimate)
        raise self._rejection(caller.tenant, state, now)

    def _rejection(self, tenant: str, state: _TenantBuckets, now: float) -> RateLimited:
        return rejected(
            tenant,
            rpm=state.rpm,
            requests_capacity=state.requests.capacity,
            requests_level=state.requests.level(now),
            tpm=state.tpm,
            tokens_level=state.tokens.level(now),
        )

    def snapshot(self, tenant: str) -> tuple[float, float] | None:
        """``(requests level, tokens level)`` of a tenant now; for tests and debugging."""
        state = self._tenants.get(tenant)
        if state is None:
            return None
        now = self._clock()
        return state.requests.level(now), state.tokens.level(now)
