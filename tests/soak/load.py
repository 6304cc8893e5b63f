"""The load: concurrent workers sending the scenario mix, and a sampler watching the sidecar."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from tests.soak.sampler import Sample, read_sample
from tests.soak.traffic import Scenario, picker, run_once

PROGRESS_EVERY_SECONDS = 30.0
CLIENT_TIMEOUT_SECONDS = 30.0
# Runs beside the workers from the start of the load; gets the load's start (monotonic).
Companion = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Event:
    """A request whose outcome its scenario does not always allow, with when it ran.

    Times are seconds since the load started; the verdict decides whether an outage
    window (or the pending compressed-body fix) explains it.
    """

    scenario: str
    outcome: str
    started_at: float
    ended_at: float


@dataclass
class LoadPlan:
    base_url: str
    sidecar_pid: int
    good_keys: Sequence[str]
    scenarios: Sequence[Scenario]
    seconds: float
    concurrency: int
    warmup_seconds: float
    sample_interval_seconds: float
    seed: int
    # Called about once a second: the fake upstream's request log must not grow for minutes.
    housekeeping: Callable[[], None] = lambda: None
    # True while the sidecar process is still running.
    alive: Callable[[], bool] = lambda: True
    # Chaos and probes: awaited with the workers (a companion may outlast the deadline).
    companions: Sequence[Companion] = ()


@dataclass
class LoadResult:
    outcomes: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0
    seconds: float = 0.0
    sidecar_died: bool = False
    events: list[Event] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(sum(c.values()) for c in self.outcomes.values())


async def run_load(plan: LoadPlan) -> LoadResult:
    """Drive the mix for ``plan.seconds``; sample the sidecar every interval after the warm-up."""
    result = LoadResult()
    rng = random.Random(plan.seed)
    draw = picker(plan.scenarios, rng)
    started = result.started = time.monotonic()
    deadline = started + plan.seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while (begun := time.monotonic()) < deadline and not result.sidecar_died:
            scenario = draw()
            outcome = await run_once(session, plan.base_url, scenario, plan.good_keys, rng)
            result.outcomes[scenario.name][outcome] += 1
            if outcome not in scenario.expected:
                ended = time.monotonic()
                result.events.append(
                    Event(scenario.name, outcome, begun - started, ended - started)
                )

    async def sampler() -> None:
        next_sample = started + plan.warmup_seconds
        next_progress = started + PROGRESS_EVERY_SECONDS
        while (now := time.monotonic()) < deadline:
            plan.housekeeping()
            if not plan.alive():
                result.sidecar_died = True
                return
            if now >= next_sample:
                result.samples.append(read_sample(plan.sidecar_pid, now - started))
                next_sample = now + plan.sample_interval_seconds
            if now >= next_progress:
                _progress(result, now - started)
                next_progress += PROGRESS_EVERY_SECONDS
            await asyncio.sleep(min(1.0, max(0.0, next_sample - time.monotonic())))

    connector = aiohttp.TCPConnector(limit=plan.concurrency)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(
            sampler(),
            *(worker(session) for _ in range(plan.concurrency)),
            *(companion(started) for companion in plan.companions),
        )
    result.seconds = time.monotonic() - started
    return result


def _progress(result: LoadResult, elapsed: float) -> None:
    last = result.samples[-1] if result.samples else None
    where = f"RSS {last.rss_kib / 1024:.1f} MiB, {last.fds} fds" if last else "warming up"
    print(
        f"soak: {elapsed:5.0f} s, {result.requests:,} requests "
        f"({result.requests / elapsed:,.0f} req/s), {where}",
        file=sys.stderr,
        flush=True,
    )
