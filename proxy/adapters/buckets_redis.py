"""``RateLimiter`` port with every tenant's budgets in Redis, shared by all sidecars.

One Lua script (see ADR 0020) refills and charges both budgets of a tenant in one
atomic step, on Redis' own clock (``TIME``), so sidecars with skewed clocks agree.
Keys: ``<prefix>{<tenant>}:requests`` and ``...:tokens`` (the hash tag keeps a
tenant's two keys in one Redis Cluster slot), hashes ``{l: level, t: µs stamp}``
that expire once they would have refilled to full: an absent key reads as full.

Settle and refund only add to the tenant's pending correction in memory; the tenant's
next admit carries it in the same script call, and a background flusher sends those of
tenants without an admit every ``flush_interval_seconds`` (ADR 0023): one Redis round
trip per request, a correction seen by other sidecars up to that interval late.

When Redis fails (refused, timeout, any Redis error), ``on_backend_error`` is called
and, for ``retry_seconds``, requests skip Redis: ``failure_mode="open"`` admits them
through the in-process ``fallback``, ``"closed"`` answers 503. After that one request
probes Redis (the others keep skipping it) and its success ends the outage.

Commands go out packed, one write per call, on the raw connections of
``buckets_redis_connections``. Only a standalone endpoint is supported (ADR 0020). A
Redis Cluster node's ``MOVED``, ``ASK``, ``CLUSTERDOWN``, ``TRYAGAIN`` or ``CROSSSLOT``
reply is handled like an outage and logged once as the error
``redis_cluster_unsupported``: a setup error is named, not passed off as a flaky Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Literal

import structlog
from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    MaxConnectionsError,
    RedisError,
    TryAgainError,
)

from proxy.adapters.buckets_redis_connections import RedisConnections
from proxy.adapters.buckets_redis_script import TenantKeys, bulk
from proxy.core.errors import ServiceUnavailable
from proxy.core.limiter import InProcessRateLimiter, LocalReservation, rejected
from proxy.core.ports import Caller, Clock, Reservation

_BACKEND_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
# Replies only a Redis Cluster node gives (MovedError is an AskError).
_CLUSTER_REPLIES = (AskError, ClusterDownError, TryAgainError, ClusterCrossSlotError)
_log = structlog.get_logger("llm_sidecar.rate_limiter")


class RedisReservation:
    """Tokens debited in Redis; the first settle or refund queues the correction."""

    __slots__ = ("_amount", "_keys", "_limiter")

    def __init__(self, limiter: RedisRateLimiter, keys: TenantKeys, amount: int) -> None:
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
        flush_interval_seconds: float = 0.5,
    ) -> None:
        self._connections = RedisConnections(
            redis_url,
            timeout_seconds=timeout_seconds,
            connect_timeout_seconds=connect_timeout_seconds,
            max_connections=max_connections,
        )
        # Bound once: the request path pays no extra attribute hop for the split.
        self._call = self._connections.call
        self._default_rpm = default_rpm
        self._default_tpm = default_tpm
        self._closed = failure_mode == "closed"
        self._fallback = fallback
        self._on_backend_error = on_backend_error
        self._prefix = key_prefix
        self._clock = clock
        self._retry_seconds = retry_seconds
        self._flush_interval = flush_interval_seconds
        self._tenants: dict[str, TenantKeys] = {}
        self._dirty: set[TenantKeys] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._sending = asyncio.Lock()
        self._down = False
        self._probing = False
        self._retry_at = 0.0
        self._cluster_reported = False

    def _keys(self, caller: Caller) -> TenantKeys:
        rpm = caller.rpm or self._default_rpm
        tpm = caller.tpm or self._default_tpm
        keys = self._tenants.get(caller.tenant)
        if keys is None or rpm != keys.rpm or tpm != keys.tpm or caller.burst != keys.burst:
            old, keys = keys, TenantKeys(self._prefix, caller.tenant, rpm, tpm, caller.burst)
            if old is not None:  # the pending correction moves to the new limits
                keys.pending, old.pending = old.pending, 0
                self._dirty.add(keys)
            self._tenants[caller.tenant] = keys
        return keys

    async def admit(self, caller: Caller, estimated_tokens: int) -> Reservation:
        if self._down and (self._probing or self._clock() < self._retry_at):
            return self._degraded(caller, estimated_tokens)
        keys = self._keys(caller)
        estimate = estimated_tokens if estimated_tokens > 0 else 0
        delta, keys.pending = keys.pending, 0
        probe = self._down
        self._probing = probe
        try:
            reply = await self._call(
                (keys.admit_head + bulk(b"%d" % estimate) + bulk(b"%d" % delta),)
            )
        except MaxConnectionsError:
            # Busy, not down: only this request is served degraded; the correction waits.
            self._add_pending(keys, delta)
            return self._degraded(caller, estimated_tokens)
        except _BACKEND_ERRORS as exc:
            self._backend_failed(exc)
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

    def _backend_failed(self, exc: BaseException) -> None:
        if isinstance(exc, _CLUSTER_REPLIES) and not self._cluster_reported:
            self._cluster_reported = True  # a setup error: say so once, then act as if down
            _log.error(
                "redis_cluster_unsupported",
                reply=type(exc).__name__,
                hint="LLM_SIDECAR_REDIS_URL must name one standalone Redis, not a cluster node",
                failure_mode="closed" if self._closed else "open",
            )
        self._down = True
        self._probing = False
        self._retry_at = self._clock() + self._retry_seconds
        for keys in self._dirty:  # dropped, not queued: what they correct refills by itself
            keys.pending = 0
        self._dirty.clear()
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

    def adjust_later(self, keys: TenantKeys, delta: int) -> None:
        """Add ``delta`` tokens (negative: take) to the tenant's pending correction.

        While Redis is marked down the correction is dropped rather than queued: the
        debit it would correct refills by itself.
        """
        if delta != 0 and not self._down:
            self._add_pending(keys, delta)

    def _add_pending(self, keys: TenantKeys, delta: int) -> None:
        keys.pending += delta
        self._dirty.add(keys)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_every())

    async def _flush_every(self) -> None:
        """Send pending corrections every interval; ends once a round finds none."""
        try:
            while self._dirty:
                await asyncio.sleep(self._flush_interval)
                await self._send_pending()
        finally:
            self._flusher = None

    async def _send_pending(self) -> None:
        async with self._sending:  # so flush() also waits for a round already in flight
            await self._send_dirty()

    async def _send_dirty(self) -> None:
        dirty, self._dirty = self._dirty, set()
        commands = []
        for keys in dirty:
            if keys.pending != 0:
                commands.append(keys.adjust_command(keys.pending))
                keys.pending = 0
        if not commands:
            return
        try:
            await self._call(commands)
        except MaxConnectionsError:
            pass  # busy: these few corrections are dropped, as on failure
        except _BACKEND_ERRORS as exc:
            if not self._down:
                self._backend_failed(exc)

    async def flush(self) -> None:
        """Send every correction pending so far to Redis (or drop it on failure)."""
        await self._send_pending()

    async def aclose(self) -> None:
        """Stop the flusher, send pending corrections, then close the connections."""
        flusher = self._flusher
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        await self._send_pending()
        await self._connections.aclose()
