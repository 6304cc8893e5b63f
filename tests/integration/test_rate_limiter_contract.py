"""One contract, every ``RateLimiter``: the in-process buckets and the Redis ones (real Redis).

What a caller of the port may rely on, whichever store holds the buckets: admission up to
the request budget, the 429's limit and headers, an estimate that may overdraw the token
budget, refunds and settlements that give tokens back, separate tenants, defaults.
Time never moves here (the Redis buckets read the server's clock), so every assertion is
about one instant.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from proxy.adapters.buckets_redis import RedisRateLimiter
from proxy.core.errors import RateLimited
from proxy.core.limiter import InProcessRateLimiter
from proxy.core.ports import RateLimiter
from tests.support.fakes import FakeCaller, FakeClock

REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_RPM, DEFAULT_TPM = 60, 10_000
HEADERS = {
    "Retry-After",
    "retry-after-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
}


async def _redis_or_skip() -> None:
    client = redis_asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis on 127.0.0.1:6379 is required in CI: {exc}")
        pytest.skip("Redis on 127.0.0.1:6379 is not reachable")
    finally:
        await client.aclose()


@pytest.fixture(params=["in-process", pytest.param("redis", marks=pytest.mark.redis)])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    """The store under test, with the same defaults (60 rpm, 10,000 tpm)."""
    local = InProcessRateLimiter(
        default_rpm=DEFAULT_RPM, default_tpm=DEFAULT_TPM, clock=FakeClock(0.0)
    )
    if request.param == "in-process":
        yield local
        return
    await _redis_or_skip()
    prefix = f"llm-sidecar-contract-{uuid.uuid4().hex}:"
    shared = RedisRateLimiter(
        REDIS_URL,
        default_rpm=DEFAULT_RPM,
        default_tpm=DEFAULT_TPM,
        failure_mode="closed",  # a Redis failure must fail the test, not fall back
        fallback=local,
        key_prefix=prefix,
        clock=FakeClock(0.0),
    )
    yield shared
    await shared.aclose()
    client = redis_asyncio.Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


Tenant = Callable[..., FakeCaller]


def _tenant(**limits: int) -> FakeCaller:
    return FakeCaller(tenant=f"t-{uuid.uuid4().hex[:8]}", **limits)


async def test_admits_up_to_the_request_budget_then_names_the_limit(limiter: RateLimiter) -> None:
    """rpm 3: three requests pass, the fourth is a 429 for requests with all eight headers."""
    caller = _tenant(rpm=3)
    for _ in range(3):
        await limiter.admit(caller, 1)
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(caller, 1)
    assert caught.value.limit == "requests"
    assert set(caught.value.headers) >= HEADERS
    assert caught.value.headers["x-ratelimit-limit-requests"] == "3"
    assert caught.value.headers["x-ratelimit-remaining-requests"] == "0"


async def test_an_estimate_may_overdraw_the_tokens_once(limiter: RateLimiter) -> None:
    """tpm 100: a 500-token estimate is admitted; the next request waits for the tokens."""
    caller = _tenant(tpm=100)
    await limiter.admit(caller, 500)
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(caller, 1)
    assert caught.value.limit == "tokens"
    assert caught.value.headers["x-ratelimit-limit-tokens"] == "100"


async def test_a_refund_gives_the_tokens_back(limiter: RateLimiter) -> None:
    """Refunding the overdrawing reservation lets the tenant in again at once."""
    caller = _tenant(tpm=100)
    reservation = await limiter.admit(caller, 500)
    reservation.refund()
    await limiter.admit(caller, 1)


async def test_a_settlement_below_the_estimate_gives_the_rest_back(limiter: RateLimiter) -> None:
    """Settling a 500-token estimate to 10 real tokens leaves the budget positive again."""
    caller = _tenant(tpm=100)
    reservation = await limiter.admit(caller, 500)
    reservation.settle(10)
    await limiter.admit(caller, 1)


async def test_tenants_have_budgets_of_their_own(limiter: RateLimiter) -> None:
    """One tenant's empty request budget leaves another's untouched."""
    spent, fresh = _tenant(rpm=1), _tenant(rpm=1)
    await limiter.admit(spent, 1)
    with pytest.raises(RateLimited):
        await limiter.admit(spent, 1)
    await limiter.admit(fresh, 1)


async def test_tenants_without_limits_get_the_defaults(limiter: RateLimiter) -> None:
    """A tenant that sets nothing is limited by the defaults the limiter was given."""
    caller = _tenant()
    await limiter.admit(caller, DEFAULT_TPM * 2)
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(caller, 1)
    assert caught.value.headers["x-ratelimit-limit-tokens"] == str(DEFAULT_TPM)
    assert caught.value.headers["x-ratelimit-limit-requests"] == str(DEFAULT_RPM)
