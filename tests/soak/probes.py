"""Recovery probes: after each restart, how long until the sidecar uses the service again.

Two observables, each one request every ``PROBE_INTERVAL_SECONDS`` on its own connection:

- Shared buckets: the probe tenant's request budget is set to -1000 *in Redis* before
  each probe request. A sidecar that reads Redis answers 429; one on its in-process
  fallback (``RATE_LIMIT_FAILURE_MODE=open``) admits it (200), since that tenant's local
  budget (600 rpm) is never drained by 4 probes a second. So 429 means "Redis served".
- Auth: a valid key the sidecar has never seen, one per PostgreSQL outage, sent from the
  kill on. Its lookup cannot be cached (failures are not cached), so its first 200 is the
  first uncached key lookup the repository answered after the restart.

Whether the recovery then holds is read from the sidecar's failure counters
(tests/soak/counters.py), which see every request, not one in four seconds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.soak.buckets import bucket_key, set_level
from tests.soak.chaos import OutageRecord
from tests.soak.traffic import MAIN_ROUTE, error_code

PROBE_INTERVAL_SECONDS = 0.25
PROBE_TIMEOUT_SECONDS = 5.0
DRAINED_LEVEL = -1000.0
REDIS_SERVED = "redis"  # 429: the drained Redis budget was read
FALLBACK_SERVED = "in-process fallback"  # 200: admitted without Redis
_BODY = orjson.dumps(
    {"model": "fake-model", "messages": [{"role": "user", "content": "probe"}], "max_tokens": 4}
)


@dataclass
class Probes:
    """The probe loop's inputs and what it saw (counts by store / auth answer)."""

    base_url: str
    records: Sequence[OutageRecord]
    redis: Redis
    bucket_tenant: str
    bucket_user_key: str
    auth_keys: Sequence[str]
    """Never-used valid keys: [0] for the baseline, then one per PostgreSQL outage."""
    recovery_bound: float
    served_outside_outages: Counter[str] = field(default_factory=Counter)
    served_during_outages: Counter[str] = field(default_factory=Counter)
    auth_answers: Counter[str] = field(default_factory=Counter)
    odd_outside_outages: list[tuple[float, str]] = field(default_factory=list)
    """Bucket probes not served by Redis outside Redis outages: (seconds, answer)."""

    async def baseline(self) -> tuple[str, str]:
        """Before any chaos: which store serves, and whether a new key authenticates."""
        async with _session() as session:
            store = await self._bucket_probe(session)
            auth = await _post(session, self.base_url, self.auth_keys[0])
        return store, auth

    async def run(
        self, started: float, load_deadline: float, keep_going: Callable[[], bool]
    ) -> None:
        """Probe until the load ends and every outage has recovered (or run out of time)."""
        async with _session() as session:
            while keep_going() and (time.monotonic() < load_deadline or self._pending(started)):
                next_at = time.monotonic() + PROBE_INTERVAL_SECONDS
                await asyncio.gather(
                    self._watch_buckets(session, started), self._watch_auth(session, started)
                )
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def _pending(self, started: float) -> bool:
        now = time.monotonic() - started
        return any(
            r.killed_at is not None
            and r.recovered_at is None
            and (r.ready_at is None or now < r.ready_at + self.recovery_bound)
            for r in self.records
        )

    def _current(self, service: str, at: float) -> OutageRecord | None:
        return next((r for r in self.records if r.service == service and r.active(at)), None)

    async def _watch_buckets(self, session: aiohttp.ClientSession, started: float) -> None:
        begun = time.monotonic() - started
        store = await self._bucket_probe(session)
        ended = time.monotonic() - started
        record = self._current("redis", begun)
        if record is None:
            self.served_outside_outages[store] += 1
            if store != REDIS_SERVED:
                self.odd_outside_outages.append((ended, store))
            return
        self.served_during_outages[store] += 1
        if store == FALLBACK_SERVED and record.first_failure_at is None:
            record.first_failure_at = ended
        ready = record.ready_at
        if store == REDIS_SERVED and ready is not None and begun >= ready:
            record.recovered_at = ended
            _say(f"{ended:5.0f} s, shared buckets served by Redis again")

    async def _bucket_probe(self, session: aiohttp.ClientSession) -> str:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                await set_level(
                    self.redis, bucket_key(self.bucket_tenant, "requests"), DRAINED_LEVEL
                )
        except (RedisError, OSError, TimeoutError):
            pass  # Redis is down: the sidecar cannot read it either
        outcome = await _post(session, self.base_url, self.bucket_user_key)
        if outcome == "429 rate_limit_exceeded":
            return REDIS_SERVED
        return FALLBACK_SERVED if outcome == "200" else outcome

    async def _watch_auth(self, session: aiohttp.ClientSession, started: float) -> None:
        begun = time.monotonic() - started
        record = self._current("postgres", begun)
        if record is None:
            return
        ordinal = [r for r in self.records if r.service == "postgres"].index(record)
        outcome = await _post(session, self.base_url, self.auth_keys[1 + ordinal])
        ended = time.monotonic() - started
        self.auth_answers[outcome] += 1
        if outcome == "503 auth_unavailable" and record.first_failure_at is None:
            record.first_failure_at = ended
        ready = record.ready_at
        if outcome == "200" and ready is not None and begun >= ready:
            record.recovered_at = ended
            _say(f"{ended:5.0f} s, a new key authenticates again")


def _say(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=4),
        timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_SECONDS),
    )


async def _post(session: aiohttp.ClientSession, base_url: str, key: str) -> str:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        async with session.post(base_url + MAIN_ROUTE, data=_BODY, headers=headers) as response:
            body = await response.read()
            return "200" if response.status == 200 else f"{response.status} {error_code(body)}"
    except (TimeoutError, aiohttp.ClientError) as exc:
        return f"client error: {type(exc).__name__}"
