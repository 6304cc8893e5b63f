"""The reservation ledger: after the soak, does every token a request reserved come back?

A tenant's token budget in Redis is set to a known level at a known Redis-clock stamp,
then the whole scenario mix (faults, cut streams, hang-ups, timeouts included) runs
for a few seconds as that tenant only, and stops. Once the sidecar has sent its last
corrections, the stored level must equal::

    start level + refill (tpm/60 per second, from the start stamp to the stored stamp)
                - tokens the upstream reported (llm_sidecar_tokens_total of the tenant)

because a finished request's estimate is corrected to its reported usage and every
other reservation is refunded. Anything short of that is reserved and never returned:
a leak. The budget stays far from empty and from full, so neither bound clips the sum.
A Redis error during the phase makes the sidecar drop corrections on purpose (ADR
0021), so such a phase proves nothing: it is reported as inconclusive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from tests.soak.buckets import bucket_key, read_level, set_level
from tests.support.metrics import Samples, scrape, value

TENANT = "ledger"
TPM = 600_000  # refills 10,000 tokens a second
START_LEVEL = 200_000.0  # a few seconds of mix moves it by tens of thousands at most
TOLERANCE_TOKENS = 1.0  # float rounding; one leaked reservation is >= 16 tokens
SECONDS = 10.0
CONCURRENCY = 16  # below the main load's: a Redis reply late past 0.25 s spoils the books
ATTEMPTS = 3
IDLE_TIMEOUT_SECONDS = 15.0
FLUSH_WAIT_SECONDS = 2.0  # the sidecar flushes corrections every 0.5 s


@dataclass(frozen=True)
class Ledger:
    """The books of one ledger phase."""

    requests: int
    start_level: float
    start_stamp_us: int
    end_level: float | None
    end_stamp_us: int | None
    settled_tokens: float
    backend_errors: float
    attempt: int = 1

    @property
    def expected_level(self) -> float | None:
        if self.end_stamp_us is None:
            return None
        refill = (self.end_stamp_us - self.start_stamp_us) * TPM / 60_000_000
        return self.start_level + refill - self.settled_tokens

    @property
    def unreturned(self) -> float | None:
        """Tokens reserved and never settled or refunded (positive: leaked)."""
        expected = self.expected_level
        return None if expected is None or self.end_level is None else expected - self.end_level

    @property
    def conclusive(self) -> bool:
        return self.backend_errors == 0 and self.end_level is not None

    @property
    def passed(self) -> bool:
        missing = self.unreturned
        return self.conclusive and missing is not None and abs(missing) <= TOLERANCE_TOKENS


def inflight(samples: Samples) -> dict[str, float]:
    """``llm_sidecar_inflight_requests`` per upstream."""
    found: dict[str, float] = {}
    for (name, labels), number in samples.items():
        if name == "llm_sidecar_inflight_requests":
            found[dict(labels).get("upstream", "")] = number
    return found


async def wait_idle(admin_url: str) -> Samples:
    """Scrape until no upstream call is in flight (or 15 s went by); the last scrape."""
    deadline = time.monotonic() + IDLE_TIMEOUT_SECONDS
    while True:
        samples = await asyncio.to_thread(scrape, admin_url)
        if not any(inflight(samples).values()) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.2)


def _errors(samples: Samples) -> float:
    return value(samples, "llm_sidecar_rate_limiter_backend_errors_total")


def _tokens(samples: Samples) -> float:
    return value(samples, "llm_sidecar_tokens_total", tenant=TENANT)


async def keep_books(redis: Redis, admin_url: str, burst: Callable[[], Awaitable[int]]) -> Ledger:
    """Set the tenant's budget, run ``burst`` (returns its request count), read it back."""
    key = bucket_key(TENANT, "tokens")
    before = await asyncio.to_thread(scrape, admin_url)
    start_stamp = await set_level(redis, key, START_LEVEL)
    requests = await burst()
    await wait_idle(admin_url)
    await asyncio.sleep(FLUSH_WAIT_SECONDS)
    stored = await read_level(redis, key)
    after = await asyncio.to_thread(scrape, admin_url)
    return Ledger(
        requests=requests,
        start_level=START_LEVEL,
        start_stamp_us=start_stamp,
        end_level=None if stored is None else stored[0],
        end_stamp_us=None if stored is None else stored[1],
        settled_tokens=_tokens(after) - _tokens(before),
        backend_errors=_errors(after) - _errors(before),
    )
