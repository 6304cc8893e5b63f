"""The Redis side of the shared buckets: the Lua script and the commands that run it.

Commands are packed in RESP here rather than by redis-py (its packer costs ~15 µs a
call), and each tenant's fixed arguments are packed once (ADR 0020, ADR 0023).
"""

from __future__ import annotations

import hashlib

from proxy.core.limiter import request_capacity

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
  local tpm, estimate, delta = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local rl, rs = load(KEYS[1], rpm, rcap)
  local tl, ts = load(KEYS[2], tpm, tpm)
  if delta ~= 0 then tl = math.min(tl + delta, tpm) end
  if rl >= 1 and tl > 0 then
    store(KEYS[1], rl - 1, rs, rpm, rcap)
    store(KEYS[2], tl - estimate, ts, tpm, tpm)
    return {1, tostring(rl - 1), tostring(tl - estimate)}
  end
  if delta ~= 0 then store(KEYS[2], tl, ts, tpm, tpm) end
  return {0, tostring(rl), tostring(tl)}
end

local tpm, delta = tonumber(ARGV[2]), tonumber(ARGV[3])
local tl, ts = load(KEYS[1], tpm, tpm)
store(KEYS[1], math.min(tl + delta, tpm), ts, tpm, tpm)
return 1
"""
"""Modes: ``admit rpm request_capacity tpm estimate delta`` on (requests, tokens) keys
first adds the pending correction ``delta`` to the tokens (as ``adjust`` does), then
admits, returning ``[admitted, requests level, tokens level]``; ``adjust tpm delta`` on
the tokens key (credit > 0, debit < 0)."""

BUCKETS_SCRIPT_SHA = hashlib.sha1(BUCKETS_SCRIPT, usedforsecurity=False).hexdigest()


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def command(*parts: bytes) -> bytes:
    """One command in RESP, packed here: redis-py's packer costs ~15 µs a call."""
    return b"*%d\r\n" % len(parts) + b"".join(map(bulk, parts))


SCRIPT_LOAD = command(b"SCRIPT", b"LOAD", BUCKETS_SCRIPT)


class TenantKeys:
    """Per-tenant packed arguments and the tenant's token correction not yet in Redis."""

    __slots__ = ("admit_head", "burst", "capacity", "pending", "rpm", "tokens_key", "tpm")

    def __init__(self, prefix: str, tenant: str, rpm: int, tpm: int, burst: int | None) -> None:
        self.tokens_key = f"{prefix}{{{tenant}}}:tokens".encode()
        self.rpm, self.tpm, self.burst = rpm, tpm, burst
        self.capacity = request_capacity(rpm, burst)
        self.pending = 0
        # EVALSHA sha 2 requests tokens admit rpm capacity tpm | estimate delta
        self.admit_head = b"*11\r\n" + b"".join(
            map(
                bulk,
                (
                    b"EVALSHA", BUCKETS_SCRIPT_SHA.encode(), b"2",
                    f"{prefix}{{{tenant}}}:requests".encode(), self.tokens_key,
                    b"admit", b"%d" % rpm, b"%d" % self.capacity, b"%d" % tpm,
                ),
            )
        )  # fmt: skip

    def adjust_command(self, delta: int) -> bytes:
        return command(
            b"EVALSHA", BUCKETS_SCRIPT_SHA.encode(), b"1", self.tokens_key,
            b"adjust", b"%d" % self.tpm, b"%d" % delta,
        )  # fmt: skip
