"""``RateLimiter`` port with every tenant's budgets in Redis, shared by all sidecars.

One Lua script (see ADR 0020) refills and charges both budgets of a tenant in one
atomic step, on Redis' own clock (``TIME``), so sidecars with skewed clocks agree.
Keys: ``<prefix>{<tenant>}:requests`` and ``...:tokens`` (the hash tag keeps a
tenant's two keys in one Redis Cluster slot), hashes ``{l: level, t: µs stamp}``
that expire once they would have refilled to full: an absent key reads as full.

Settle and refund are synchronous in the port, so they schedule the correction as a
background task; :meth:`RedisRateLimiter.aclose` waits for those.

When Redis fails (refused, timeout, any Redis error), ``on_backend_error`` is called
and, for ``retry_seconds``, requests skip Redis: ``failure_mode="open"`` admits them
through the in-process ``fallback``, ``"closed"`` answers 503. After that one request
probes Redis (the others keep skipping it) and its success ends the outage.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable
from typing import Literal

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import MaxConnectionsError, NoScriptError, RedisError

from proxy.core.errors import ServiceUnavailable
from proxy.core.limiter import InProcessRateLimiter, LocalReservation, rejected, request_capacity
from proxy.core.ports import Caller, Clock, Reservation

BUCKETS_SCRIPT = b"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function load(key, per_minute, cap)
  local v = redis.call('HMGET', key, 'l', 't')
  local level, stamp = tonumber(v[1]), tonumber(v[2])
  if not level or not stamp then return cap, now end
  if now > stamp then
    level = level + (now - stamp) * per_minute / 60000000
    stamp = now
  end
  if level > cap then level = cap end
  return level, stamp
end

local function store(key, level, stamp, per_minute, cap)
  if level >= cap then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, 'l', level, 't', stamp)
  redis.call('PEXPIRE', key, math.ceil((cap - level) * 60000 / per_minute) + 1000)
end

if ARGV[1] == 'admit' then
  local rpm, rcap = tonumber(ARGV[2]), tonumber(ARGV[3])
  local tpm, estimate = tonumber(ARGV[4]), tonumber(ARGV[5])
  local rl, rs = load(KEYS[1], rpm, rcap)
  local tl, ts = load(KEYS[2], tpm, tpm)
  if rl >= 1 and tl > 0 then
    store(KEYS[1], rl - 1, rs, rpm, rcap)
    store(KEYS[2], tl - estimate, ts, tpm, tpm)
    return {1, tostring(rl - 1), tostring(tl - estimate)}
  end
  return {0, tostring(rl), tostring(tl)}
end

local tpm, delta = tonumber(ARGV[2]), tonumber(ARGV[3])
local tl, ts = load(KEYS[1], tpm, tpm)
store(KEYS[1], math.min(tl + delta, tpm), ts, tpm, tpm)
return 1
"""
"""Modes: ``admit rpm request_capacity tpm estimate`` on (requests, tokens) keys
returning ``[admitted, requests level, tokens level]``; ``adjust tpm delta`` on the
tokens key (credit > 0, debit < 0)."""

BUCKETS_SCRIPT_SHA = hashlib.sha1(BUCKETS_SCRIPT, usedforsecurity=False).hexdigest()
_BACKEND_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


class _TenantKeys:
    """Per-tenant arguments, rebuilt only when the tenant's limits change."""

    __slots__ = ("burst", "capacity", "requests_key", "rpm", "tokens_key", "tpm")

    def __init__(self, prefix: str, tenant: str, rpm: int, tpm: int, burst: int | None) -> None:
        self.requests_key = f"{prefix}{{{tenant}}}:requests"
        self.tokens_key = f"{prefix}{{{tenant}}}:tokens"
        self.rpm, self.tpm, self.burst = rpm, tpm, burst
        self.capacity = request_capacity(rpm, burst)


class RedisReservation:
    """Tokens debited in Redis; the first settle or refund schedules the correction."""

    __slots__ = ("_amount", "_keys", "_limiter")

    def __init__(self, limiter: RedisRateLimiter, keys: _TenantKeys, amount: int) -> None:
        self._limiter: RedisRateLimiter | None = limiter
        self._keys = keys
        self._amount = amount

    def settle(self, actual_tokens: int) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter.adjust_later(self._keys, self._amount - max(0, actual_tokens))

    def refund(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter.adjust_later(self._keys, self._amount)


class RedisRateLimiter:
    """Budgets shared through Redis; degrades as ``failure_mode`` says when it is gone."""

    def __init__(
        self,
        redis_url: str,
        *,
        default_rpm: int,
        default_tpm: int,
        failure_mode: Literal["open", "closed"],
        fallback: InProcessRateLimiter,
        on_backend_error: Callable[[], None] | None = None,
        key_prefix: str = "llm-sidecar:",
        clock: Clock = time.monotonic,
        retry_seconds: float = 1.0,
        timeout_seconds: float = 0.25,
        connect_timeout_seconds: float = 0.5,
        max_connections: int = 512,
    ) -> None:
        # A non-blocking pool: BlockingConnectionPool's wait costs ~80 µs per command here.
        self._pool = ConnectionPool.from_url(
            redis_url,
            max_connections=max_connections,
            socket_connect_timeout=connect_timeout_seconds,
            socket_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = Redis(connection_pool=self._pool)
        self._default_rpm = default_rpm
        self._default_tpm = default_tpm
        self._closed = failure_mode == "closed"
        self._fallback = fallback
        self._on_backend_error = on_backend_error
        self._prefix = key_prefix
        self._clock = clock
        self._retry_seconds = retry_seconds
        self._tenants: dict[str, _TenantKeys] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._down = False
        self._probing = False
        self._retry_at = 0.0

    def _keys(self, caller: Caller) -> _TenantKeys:
        rpm = caller.rpm or self._default_rpm
        tpm = caller.tpm or self._default_tpm
        keys = self._tenants.get(caller.tenant)
        if keys is None or rpm != keys.rpm or tpm != keys.tpm or caller.burst != keys.burst:
            keys = _TenantKeys(self._prefix, caller.tenant, rpm, tpm, caller.burst)
            self._tenants[caller.tenant] = keys
        return keys

    async def admit(self, caller: Caller, estimated_tokens: int) -> Reservation:
        if self._down and (self._probing or self._clock() < self._retry_at):
            return self._degraded(caller, estimated_tokens)
        keys = self._keys(caller)
        estimate = estimated_tokens if estimated_tokens > 0 else 0
        probe = self._down
        self._probing = probe
        try:
            reply = await self._run(
                2, keys.requests_key, keys.tokens_key,
                "admit", keys.rpm, keys.capacity, keys.tpm, estimate,
            )  # fmt: skip
        except MaxConnectionsError:
            # Busy, not down: only this request is served degraded.
            return self._degraded(caller, estimated_tokens)
        except _BACKEND_ERRORS:
            self._backend_failed()
            return self._degraded(caller, estimated_tokens)
        finally:
            if probe:
                self._probing = False  # also when cancelled: the next request probes
        self._down = False
        if reply[0] == 1:
            return RedisReservation(self, keys, estimate)
        raise rejected(
            caller.tenant,
            rpm=keys.rpm,
            requests_capacity=keys.capacity,
            requests_level=float(reply[1]),
            tpm=keys.tpm,
            tokens_level=float(reply[2]),
        )

    async def _run(self, numkeys: int, *keys_and_args: str | int) -> list[int | bytes]:
        try:
            reply = await self._redis.evalsha(BUCKETS_SCRIPT_SHA, numkeys, *keys_and_args)
        except NoScriptError:
            await self._redis.script_load(BUCKETS_SCRIPT)
            reply = await self._redis.evalsha(BUCKETS_SCRIPT_SHA, numkeys, *keys_and_args)
        return reply  # type: ignore[no-any-return]

    def _backend_failed(self) -> None:
        self._down = True
        self._probing = False
        self._retry_at = self._clock() + self._retry_seconds
        if self._on_backend_error is not None:
            self._on_backend_error()

    def _degraded(self, caller: Caller, estimated_tokens: int) -> LocalReservation:
        if self._closed:
            raise ServiceUnavailable(
                "The rate limiter's backend is unavailable; please retry shortly.",
                code="rate_limiter_unavailable",
                headers={"Retry-After": str(max(1, math.ceil(self._retry_seconds)))},
            )
        return self._fallback.admit_now(caller, estimated_tokens)

    def adjust_later(self, keys: _TenantKeys, delta: int) -> None:
        """Add ``delta`` tokens (negative: take) to the tenant's token budget, in the background.

        While Redis is marked down the correction is dropped rather than queued: the
        debit it would correct refills by itself, and a queue would grow without bound.
        """
        if delta == 0 or self._down:
            return
        task = asyncio.get_running_loop().create_task(self._adjust(keys, delta))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _adjust(self, keys: _TenantKeys, delta: int) -> None:
        try:
            await self._run(1, keys.tokens_key, "adjust", keys.tpm, delta)
        except _BACKEND_ERRORS:
            if not self._down:
                self._backend_failed()

    async def flush(self) -> None:
        """Wait until every settle/refund scheduled so far has reached Redis (or failed)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Wait for pending corrections, then close the connections."""
        await self.flush()
        await self._redis.aclose()
        await self._pool.aclose()
