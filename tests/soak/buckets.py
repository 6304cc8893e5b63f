"""Reading and setting the sidecar's Redis bucket hashes from outside, as the probes need.

The layout is the one ``proxy/adapters/buckets_redis.py`` documents (ADR 0020): per
tenant, hashes ``llm-sidecar:{<tenant>}:requests`` and ``...:tokens`` holding the level
``l`` at the Redis-clock stamp ``t`` (µs); an absent hash reads as a full bucket.
"""

from __future__ import annotations

from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

KEY_PREFIX = "llm-sidecar:"  # RedisRateLimiter's default key_prefix
# Sets a level stamped with Redis' own clock, as the sidecar's script would have written it.
_SET_LEVEL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('HSET', KEYS[1], 'l', ARGV[1], 't', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {t[1], t[2]}
"""


def bucket_key(tenant: str, kind: Literal["requests", "tokens"]) -> str:
    """The Redis key of one of a tenant's two budgets."""
    return f"{KEY_PREFIX}{{{tenant}}}:{kind}"


def client(url: str) -> Redis:
    """A client that fails fast (no retries) while the private Redis is down."""
    redis: Redis = Redis.from_url(
        url,
        socket_timeout=1.0,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    return redis


async def set_level(redis: Redis, key: str, level: float, ttl_ms: int = 600_000) -> int:
    """Set a bucket's level now; returns the stamp written (µs on Redis' clock)."""
    reply: Any = await redis.eval(_SET_LEVEL, 1, key, repr(level), str(ttl_ms))
    seconds, micros = (int(part) for part in reply)
    return seconds * 1_000_000 + micros


async def read_level(redis: Redis, key: str) -> tuple[float, int] | None:
    """A bucket's stored level and stamp (µs), or ``None`` when the hash is absent (full)."""
    level, stamp = await redis.hmget(key, ["l", "t"])
    if level is None or stamp is None:
        return None
    return float(level), int(float(stamp))
