"""The sidecar's own failure counters, sampled every second: does a recovery hold?

A probe sees one request in four seconds; the counters see every request. After a
service has recovered, its counter must stay flat until the service is killed again:
``llm_sidecar_rate_limiter_backend_errors_total`` counts Redis failures (each one puts
the sidecar on its in-process buckets for a second), ``llm_sidecar_repository_errors_total``
the lookups PostgreSQL failed (each one a ``503 auth_unavailable``). The same goes for the
time before the first outage. A rise while the service was up is a "failure while up".
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tests.soak.chaos import OutageRecord, ServiceName
from tests.support.metrics import Samples, scrape, value

SAMPLE_SECONDS = 1.0
COUNTERS: dict[ServiceName, str] = {
    "redis": "llm_sidecar_rate_limiter_backend_errors_total",
    "postgres": "llm_sidecar_repository_errors_total",
}


@dataclass(frozen=True)
class Reading:
    """The counters at one moment (seconds since the load started)."""

    at: float
    totals: dict[ServiceName, float]


async def watch(
    admin_url: str, started: float, until: Callable[[], bool], into: list[Reading]
) -> None:
    """Append a reading every second until ``until()`` says stop (and one more at the end)."""
    while True:
        try:
            samples = await asyncio.to_thread(scrape, admin_url)
        except OSError:
            samples = {}  # the sidecar is gone: the load notices and stops
        if samples:
            totals = {service: value(samples, name) for service, name in COUNTERS.items()}
            into.append(Reading(time.monotonic() - started, totals))
        if until():
            return
        await asyncio.sleep(SAMPLE_SECONDS)


def _up_spans(
    service: ServiceName, records: Sequence[OutageRecord], end: float
) -> list[tuple[float, float, OutageRecord | None]]:
    """When the service counted as up: before its first kill, then recovery to next kill."""
    own = [r for r in records if r.service == service and r.killed_at is not None]
    spans: list[tuple[float, float, OutageRecord | None]] = []
    start: float | None = 0.0
    previous: OutageRecord | None = None
    for record in own:
        assert record.killed_at is not None
        if start is not None:
            spans.append((start, record.killed_at, previous))
        start, previous = record.recovered_at, record
    if start is not None:
        spans.append((start, end, previous))
    return spans


def failures_while_up(
    service: ServiceName, records: Sequence[OutageRecord], readings: Sequence[Reading]
) -> dict[int | None, list[float]]:
    """Times the counter rose while the service was up, by the outage it followed.

    Keyed by the index of that outage in ``records`` (``None``: before any outage). A
    rise between two readings counts when both readings fall inside one up span.
    """
    if not readings:
        return {}
    found: dict[int | None, list[float]] = {}
    spans = _up_spans(service, records, readings[-1].at)
    for before, after in itertools.pairwise(readings):
        rise = after.totals[service] - before.totals[service]
        if rise <= 0:
            continue
        for start, end, record in spans:
            if start <= before.at and after.at <= end:
                key = None if record is None else list(records).index(record)
                found.setdefault(key, []).extend([after.at] * int(rise))
    return found


REPORTED = {  # metric -> the labels the report keeps (the others are summed over)
    "llm_sidecar_requests_total": ("upstream", "code"),
    "llm_sidecar_circuit_breaker_transitions_total": ("upstream", "to"),
    "llm_sidecar_auth_failures_total": ("reason",),
    "llm_sidecar_rate_limited_total": ("tenant", "limit"),
    "llm_sidecar_rate_limiter_backend_errors_total": (),
    "llm_sidecar_repository_errors_total": (),
    "llm_sidecar_inflight_requests": ("upstream",),
}


def summarise(samples: Samples) -> dict[str, float]:
    """The metrics the report shows, summed over the labels it does not show."""
    totals: dict[str, float] = {}
    for (name, labels), number in samples.items():
        if name in REPORTED:
            found = dict(labels)
            shown = ",".join(f"{k}={found.get(k, '')}" for k in REPORTED[name])
            key = f"{name}{{{shown}}}"
            totals[key] = totals.get(key, 0.0) + number
    return totals
