"""The Redis limiter against the real Redis on 127.0.0.1:6379: shared budgets and failure modes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Literal

import pytest
import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from proxy.adapters.buckets_redis import RedisRateLimiter
from proxy.core.errors import RateLimited, ServiceUnavailable
from proxy.core.limiter import InProcessRateLimiter
from tests.support.fakes import FakeCaller, FakeClock

pytestmark = pytest.mark.redis

REDIS_URL = "redis://127.0.0.1:6379/0"
DEAD_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
async def redis_client() -> AsyncIterator[redis_asyncio.Redis]:
    """A plain client to look at the keys; skips (or fails in CI) without Redis."""
    client = redis_asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        if os.environ.get("CI"):
            pytest.fail(f"Redis on 127.0.0.1:6379 is required in CI: {exc}")
        pytest.skip("Redis on 127.0.0.1:6379 is not reachable")
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis_client: redis_asyncio.Redis) -> AsyncIterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    value = f"llm-sidecar-test-{uuid.uuid4().hex}:"
    yield value
    keys = [key async for key in redis_client.scan_iter(match=f"{value}*")]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture
async def make_limiter() -> AsyncIterator[Callable[..., RedisRateLimiter]]:
    """Builds limiters and closes them after the test."""
    made: list[RedisRateLimiter] = []

    def make(
        url: str = REDIS_URL,
        *,
        prefix: str,
        failure_mode: Literal["open", "closed"] = "open",
        fallback: InProcessRateLimiter | None = None,
        errors: list[int] | None = None,
        clock: FakeClock | None = None,
    ) -> RedisRateLimiter:
        limiter = RedisRateLimiter(
            url,
            default_rpm=60,
            default_tpm=10_000,
            failure_mode=failure_mode,
            fallback=fallback or InProcessRateLimiter(default_rpm=60, default_tpm=10_000),
            on_backend_error=(lambda: errors.append(1)) if errors is not None else None,
            key_prefix=prefix,
            clock=clock or FakeClock(0.0),
        )
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


async def _tokens_level(client: redis_asyncio.Redis, prefix: str, tenant: str = "acme") -> float:
    """The stored token level; an absent key means full (returned as inf)."""
    raw = await client.hget(f"{prefix}{{{tenant}}}:tokens", "l")
    return float(raw) if raw is not None else float("inf")


async def test_two_sidecars_share_one_tenant_budget(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str
) -> None:
    """Requests spread over two limiters are admitted up to the tenant's limit in total."""
    first, second = make_limiter(prefix=prefix), make_limiter(prefix=prefix)
    caller = FakeCaller(rpm=6, tpm=100_000)  # one request refills every 10 s: none during the test

    async def one(limiter: RedisRateLimiter) -> bool:
        try:
            await limiter.admit(caller, 10)
        except RateLimited:
            return False
        return True

    results = await asyncio.gather(*(one(first if i % 2 else second) for i in range(40)))
    assert sum(results) == 6


async def test_429_from_redis_carries_the_rate_limit_headers(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str
) -> None:
    """An empty shared request budget answers with the OpenAI-style headers."""
    limiter = make_limiter(prefix=prefix)
    caller = FakeCaller(rpm=60, tpm=6000, burst=2)
    await limiter.admit(caller, 1000)
    await limiter.admit(caller, 500)
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(caller, 1)
    headers = caught.value.headers
    assert caught.value.limit == "requests"
    assert headers["Retry-After"] == "1"
    assert 500 < int(headers["retry-after-ms"]) <= 1001
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert headers["x-ratelimit-limit-tokens"] == "6000"
    assert 4500 <= int(headers["x-ratelimit-remaining-tokens"]) <= 4510
    assert "x-should-retry" not in headers


async def test_token_debt_in_redis_rejects_with_the_tokens_limit(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str
) -> None:
    """An estimate past the budget leaves a debt; the next request waits about as long as it."""
    limiter = make_limiter(prefix=prefix)
    caller = FakeCaller(rpm=600, tpm=600)  # 10 tokens a second
    await limiter.admit(caller, 900)  # balance -300: 30 s to repay
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(caller, 1)
    assert caught.value.limit == "tokens"
    assert caught.value.headers["Retry-After"] in ("30", "31")


async def test_refund_and_settle_correct_the_shared_token_budget(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str, redis_client: redis_asyncio.Redis
) -> None:
    """A refund returns the whole estimate, a settle keeps only the real usage."""
    limiter = make_limiter(prefix=prefix)
    caller = FakeCaller(rpm=60, tpm=6_000_000)  # 100,000 tokens a second: refill is visible
    first = await limiter.admit(caller, 5_000_000)
    level = await _tokens_level(redis_client, prefix)
    assert 1_000_000 <= level < 1_100_000
    first.refund()
    first.refund()
    await limiter.flush()
    assert await _tokens_level(redis_client, prefix) == float("inf")  # full: key deleted
    second = await limiter.admit(caller, 5_000_000)
    second.settle(2_000_000)
    second.settle(0)
    await limiter.flush()
    level = await _tokens_level(redis_client, prefix)
    assert 4_000_000 <= level < 4_200_000


async def test_keys_expire_once_they_would_be_full_again(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str, redis_client: redis_asyncio.Redis
) -> None:
    """Each budget key lives about as long as its refill takes, so idle tenants cost nothing."""
    limiter = make_limiter(prefix=prefix)
    await limiter.admit(FakeCaller(rpm=60, tpm=6000), 3000)  # 1 s and 30 s to refill
    requests_ttl = await redis_client.pttl(f"{prefix}{{acme}}:requests")
    tokens_ttl = await redis_client.pttl(f"{prefix}{{acme}}:tokens")
    assert 1000 < requests_ttl <= 2000
    assert 30_000 < tokens_ttl <= 31_000


async def test_dead_redis_in_open_mode_falls_back_and_backs_off(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str
) -> None:
    """Unreachable Redis: requests go to the in-process buckets, Redis is retried after a pause."""
    fallback = InProcessRateLimiter(default_rpm=60, default_tpm=10_000)
    errors: list[int] = []
    clock = FakeClock(0.0)
    limiter = make_limiter(DEAD_URL, prefix=prefix, fallback=fallback, errors=errors, clock=clock)
    caller = FakeCaller(rpm=3)
    for _ in range(3):
        (await limiter.admit(caller, 10)).settle(5)
    with pytest.raises(RateLimited):
        await limiter.admit(caller, 10)  # the fallback's own rpm 3 applies
    assert errors == [1]  # one failed attempt; the others skipped Redis
    assert fallback.snapshot("acme") is not None
    clock.now += 1.5
    with pytest.raises(RateLimited):
        await limiter.admit(caller, 10)
    assert errors == [1, 1]  # retried once after the backoff, failed again


async def test_dead_redis_in_closed_mode_answers_503(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str
) -> None:
    """Unreachable Redis with failure mode closed: 503 rate_limiter_unavailable."""
    errors: list[int] = []
    limiter = make_limiter(DEAD_URL, prefix=prefix, failure_mode="closed", errors=errors)
    for _ in range(2):
        with pytest.raises(ServiceUnavailable) as caught:
            await limiter.admit(FakeCaller(), 10)
        assert caught.value.code == "rate_limiter_unavailable"
        assert caught.value.headers["Retry-After"] == "1"
    assert errors == [1]


class TcpRelay:
    """A TCP forwarder to Redis that the test can cut and restore (Redis 'stopped')."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[object]] = set()
        self.scripts = 0  # EVALSHA commands sent to Redis through the relay

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()
        self.writers.clear()
        self.tasks.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self.writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        async def count(src: asyncio.StreamReader) -> AsyncIterator[bytes]:
            while data := await src.read(65536):
                self.scripts += data.count(b"EVALSHA")
                yield data

        async def pipe_counted(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                async for data in count(src):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe_counted(reader, up_writer), pipe(up_reader, writer))


async def test_redis_stopped_mid_test_then_recovers(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str, redis_client: redis_asyncio.Redis
) -> None:
    """Redis going away switches to the fallback; once back, the shared budget is used again."""
    relay = TcpRelay()
    await relay.start()
    clock = FakeClock(0.0)
    fallback = InProcessRateLimiter(default_rpm=60, default_tpm=10_000, clock=clock)
    errors: list[int] = []
    url = f"redis://127.0.0.1:{relay.port}/0"
    limiter = make_limiter(url, prefix=prefix, fallback=fallback, errors=errors, clock=clock)
    caller = FakeCaller(rpm=60, tpm=6_000_000)
    await limiter.admit(caller, 1_000_000)
    assert await _tokens_level(redis_client, prefix) < 6_000_000
    await relay.stop()
    await limiter.admit(caller, 1_000_000)
    assert errors == [1]
    assert fallback.snapshot("acme") is not None
    await relay.start()  # same port
    clock.now += 1.5
    await redis_client.delete(f"{prefix}{{acme}}:tokens")
    await limiter.admit(caller, 3_000_000)
    assert errors == [1]
    assert await _tokens_level(redis_client, prefix) < 3_100_000  # the debit landed in Redis
    local_before = fallback.snapshot("acme")
    await asyncio.gather(*(limiter.admit(caller, 500_000) for _ in range(5)))
    assert await _tokens_level(redis_client, prefix) < 600_000  # all five went to Redis
    assert fallback.snapshot("acme") == local_before
    await relay.stop()


async def test_a_settle_travels_with_the_next_admit_of_the_tenant(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str, redis_client: redis_asyncio.Redis
) -> None:
    """A settle makes no call of its own; the next admit applies it in its one script call."""
    relay = TcpRelay()
    await relay.start()
    limiter = make_limiter(f"redis://127.0.0.1:{relay.port}/0", prefix=prefix)
    caller = FakeCaller(rpm=60, tpm=6_000_000)
    (await limiter.admit(caller, 5_000_000)).settle(1_000_000)  # 4,000,000 back, pending
    assert relay.scripts == 1
    assert await _tokens_level(redis_client, prefix) < 1_100_000  # not in Redis yet
    await limiter.admit(caller, 1_000_000)
    assert relay.scripts == 2  # the correction rode along with the admit
    level = await _tokens_level(redis_client, prefix)
    assert 4_000_000 <= level < 4_200_000  # 6M - 5M + 4M - 1M, plus a little refill
    await relay.stop()


async def test_a_rejected_admit_still_applies_the_pending_correction(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str, redis_client: redis_asyncio.Redis
) -> None:
    """The correction is written before the admission check, also when that check fails."""
    limiter = make_limiter(prefix=prefix)
    caller = FakeCaller(rpm=60, tpm=600, burst=1)  # one request, then 1 s to the next
    (await limiter.admit(caller, 500)).settle(100)  # 400 pending credit
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(caller, 10)
    assert caught.value.limit == "requests"
    assert 500 <= await _tokens_level(redis_client, prefix) < 510


async def test_an_idle_tenants_correction_reaches_redis_through_the_flusher(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str, redis_client: redis_asyncio.Redis
) -> None:
    """Without another admit, the background flusher sends the correction within about 1 s."""
    limiter = make_limiter(prefix=prefix)
    caller = FakeCaller(rpm=60, tpm=6_000_000)
    (await limiter.admit(caller, 5_000_000)).refund()
    assert await _tokens_level(redis_client, prefix) < 1_100_000
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    while await _tokens_level(redis_client, prefix) != float("inf"):  # full: key deleted
        assert loop.time() < deadline, "the correction did not reach Redis within 1 s"
        await asyncio.sleep(0.02)  # polling a deadline, not a sleep of hope


async def test_flush_sends_every_pending_correction(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str, redis_client: redis_asyncio.Redis
) -> None:
    """flush() sends the corrections of all tenants at once, without waiting for the flusher."""
    limiter = make_limiter(prefix=prefix)
    tenants = ("acme", "globex", "initech")
    for tenant in tenants:
        (await limiter.admit(FakeCaller(tenant=tenant, tpm=6_000_000), 5_000_000)).settle(2_000_000)
    await limiter.flush()
    for tenant in tenants:
        assert 4_000_000 <= await _tokens_level(redis_client, prefix, tenant) < 4_100_000


async def test_corrections_pending_when_redis_fails_are_dropped_and_counted(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str, redis_client: redis_asyncio.Redis
) -> None:
    """A flush into a dead Redis drops the correction, counts one error, and sends nothing later."""
    relay = TcpRelay()
    await relay.start()
    errors: list[int] = []
    clock = FakeClock(0.0)
    url = f"redis://127.0.0.1:{relay.port}/0"
    limiter = make_limiter(url, prefix=prefix, errors=errors, clock=clock)
    caller = FakeCaller(rpm=60, tpm=6_000_000)
    (await limiter.admit(caller, 5_000_000)).refund()
    await relay.stop()
    await limiter.flush()
    assert errors == [1]
    await relay.start()
    clock.now += 1.5
    await limiter.admit(caller, 0)  # the probe succeeds and carries no stale correction
    assert errors == [1]
    assert await _tokens_level(redis_client, prefix) < 1_200_000
    await relay.stop()


async def test_a_flushed_script_is_loaded_again_for_admits_and_corrections(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str, redis_client: redis_asyncio.Redis
) -> None:
    """After SCRIPT FLUSH (a Redis restart), pipelined corrections and admits reload it once."""
    errors: list[int] = []
    limiter = make_limiter(prefix=prefix, errors=errors)
    tenants = ("acme", "globex")
    for tenant in tenants:
        (await limiter.admit(FakeCaller(tenant=tenant, tpm=6_000_000), 5_000_000)).settle(0)
    await redis_client.script_flush()
    await limiter.flush()  # both corrections refused with NOSCRIPT, then resent
    for tenant in tenants:
        assert await _tokens_level(redis_client, prefix, tenant) == float("inf")
    await redis_client.script_flush()
    await limiter.admit(FakeCaller(tpm=6_000_000), 1_000_000)
    assert 5_000_000 <= await _tokens_level(redis_client, prefix) < 5_100_000
    assert errors == []


async def test_a_restarted_redis_costs_one_failure_not_one_per_pooled_socket(
    make_limiter: Callable[..., RedisRateLimiter], prefix: str, redis_client: redis_asyncio.Redis
) -> None:
    """After a restart the first stale socket fails once and takes its pooled peers with it."""
    relay = TcpRelay()
    await relay.start()
    clock = FakeClock(0.0)
    errors: list[int] = []
    url = f"redis://127.0.0.1:{relay.port}/0"
    limiter = make_limiter(url, prefix=prefix, errors=errors, clock=clock)
    caller = FakeCaller(rpm=6_000, tpm=60_000_000)
    await asyncio.gather(*(limiter.admit(caller, 1) for _ in range(6)))  # six pooled sockets
    await relay.stop()
    await relay.start()  # same port: the pooled sockets' server side is gone
    for _ in range(4):  # concurrent, as under load: the pool's older sockets are used too
        clock.now += 1.5  # past any back-off: every admit goes to Redis when it can
        await asyncio.gather(*(limiter.admit(caller, 1) for _ in range(6)))
    assert errors == [1]
    await relay.stop()
