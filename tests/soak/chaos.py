"""The kill schedule: ``kill -9`` the private Redis and PostgreSQL at set points, then restart.

Each outage is placed at a fraction of the load's duration (Redis at 20 % and 60 %,
PostgreSQL at 35 % and 75 %), lasts ``outage_seconds``, and ends with the service
started again on its port and data directory. The records it fills are also what the
recovery probes (tests/soak/probes.py) and the verdict read: when the service was
killed, when it answered again, when the sidecar was seen to fail and to recover.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

ServiceName = Literal["redis", "postgres"]
SCHEDULE: tuple[tuple[ServiceName, float], ...] = (
    ("redis", 0.20),
    ("postgres", 0.35),
    ("redis", 0.60),
    ("postgres", 0.75),
)
MAX_OUTAGE_SECONDS = 25.0
MIN_OUTAGE_SECONDS = 5.0
OUTAGE_SHARE = 0.07  # of the run, for short runs: 3 minutes give outages of ~12.6 s


class Restartable(Protocol):
    """A private service the chaos may crash and bring back."""

    def kill(self) -> None: ...

    def start(self) -> float: ...


def outage_seconds_for(run_seconds: float) -> float:
    """How long each service stays down: 25 s in a long run, scaled down in a short one."""
    return max(MIN_OUTAGE_SECONDS, min(MAX_OUTAGE_SECONDS, run_seconds * OUTAGE_SHARE))


@dataclass
class OutageRecord:
    """One outage; times are seconds since the load started (``None``: not happened)."""

    service: ServiceName
    planned_at: float
    killed_at: float | None = None
    ready_at: float | None = None
    first_failure_at: float | None = None
    """First probe answer showing the sidecar saw the outage (fallback buckets, auth 503)."""
    recovered_at: float | None = None
    """First probe answer after the restart showing the service used again."""

    @property
    def recovery_seconds(self) -> float | None:
        """From the service answering again to the sidecar using it again (>= 0)."""
        if self.ready_at is None or self.recovered_at is None:
            return None
        return max(0.0, self.recovered_at - self.ready_at)

    def active(self, at: float) -> bool:
        """True from the kill until the sidecar is seen to use the service again."""
        return self.killed_at is not None and self.killed_at <= at and self.recovered_at is None

    def window(self, grace: float, bound: float) -> tuple[float, float] | None:
        """When the sidecar may answer this service's documented 503s: kill to recovery+grace.

        Without a measured recovery the window ends ``bound`` after the restart (the
        recovery check fails such a run anyway).
        """
        if self.killed_at is None:
            return None
        if self.recovered_at is not None:
            return self.killed_at, self.recovered_at + grace
        end = self.ready_at if self.ready_at is not None else float("inf")
        return self.killed_at, end + bound


def plan(run_seconds: float, *, enabled: bool = True) -> list[OutageRecord]:
    """The run's outages, in order (none when chaos is off)."""
    if not enabled:
        return []
    return [OutageRecord(service, run_seconds * at) for service, at in SCHEDULE]


def _say(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


async def run_chaos(
    records: Sequence[OutageRecord],
    services: Mapping[ServiceName, Restartable],
    *,
    started: float,
    outage_seconds: float,
    keep_going: Callable[[], bool],
) -> None:
    """Carry out the outages at their times; every killed service is always restarted."""
    for record in records:
        delay = started + record.planned_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if not keep_going():
            return
        service = services[record.service]
        # Stamped as the signal goes out: requests failing from then on are in the window.
        record.killed_at = time.monotonic() - started
        await asyncio.to_thread(service.kill)
        _say(f"{record.killed_at:5.0f} s, kill -9 {record.service}")
        try:
            await asyncio.sleep(outage_seconds)
        finally:
            ready = await asyncio.to_thread(service.start)
            record.ready_at = ready - started
            _say(f"{record.ready_at:5.0f} s, {record.service} restarted and answering")
