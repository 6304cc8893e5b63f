"""Pure figures: samples of each (target, repeat) in, one summary per target out."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.payloads import SSE_EVENTS_PER_STREAM
from bench.stream_probe import ProbeResult
from bench.wrk_load import WrkResult


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * p / 100))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


@dataclass(slots=True)
class Sample:
    """Everything measured for one target in one repeat."""

    target: str
    repeat: int
    load: WrkResult
    cpu_seconds: float | None = None
    rss_mib: float | None = None
    latency: WrkResult | None = None
    stream: WrkResult | None = None
    stream_cpu_seconds: float | None = None
    probe: ProbeResult | None = None

    @property
    def cpu_us_per_sse_event(self) -> float:
        """CPU per SSE event relayed under the 64-connection SSE load."""
        if self.stream_cpu_seconds is None or self.stream is None or not self.stream.requests:
            return math.nan
        return self.stream_cpu_seconds * 1e6 / (self.stream.requests * SSE_EVENTS_PER_STREAM)

    @property
    def cpu_us_per_request(self) -> float:
        if self.cpu_seconds is None or self.load.requests == 0:
            return math.nan
        return self.cpu_seconds * 1e6 / self.load.requests


@dataclass(slots=True)
class Summary:
    """One row: medians over repeats, added figures relative to the direct row."""

    target: str
    label: str
    rps: list[float] = field(default_factory=list)
    cpu_us: float = math.nan
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    p99_ms: float = math.nan
    rss_mib: float = math.nan
    errors: int = 0
    requests: int = 0
    added_p50_ms: float = math.nan
    added_p99_ms: float = math.nan
    stream_rps: float = math.nan
    sse_cpu_us: float = math.nan
    ttfb_added_p50_ms: float = math.nan
    ttfb_added_p99_ms: float = math.nan
    chunk_added_p50_ms: float = math.nan
    chunk_added_p99_ms: float = math.nan
    ttfb_p50_ms: float = math.nan
    ttfb_p99_ms: float = math.nan
    chunk_p50_ms: float = math.nan
    chunk_p99_ms: float = math.nan
    chunk_max_ms: float = math.nan

    @property
    def rps_median(self) -> float:
        return median(self.rps)


def _pooled(samples: Sequence[Sample], attr: str) -> list[float]:
    pooled: list[float] = []
    for sample in samples:
        if sample.probe is not None:
            pooled.extend(getattr(sample.probe, attr))
    return pooled


def _added(values: list[float], baseline: list[float], p: float) -> float:
    return (percentile(values, p) - percentile(baseline, p)) / 1e3


def _latency_added(mine: Sequence[Sample], base: dict[int, Sample], p: str) -> float:
    diffs = []
    for sample in mine:
        ref = base.get(sample.repeat)
        if sample.latency is None or ref is None or ref.latency is None:
            continue
        diffs.append((getattr(sample.latency, p) - getattr(ref.latency, p)) / 1e3)
    return median(diffs)


def summarise(
    samples: Sequence[Sample], labels: dict[str, str], baseline: str = "direct"
) -> list[Summary]:
    """One ``Summary`` per target, in ``labels`` order; added figures are against ``baseline``."""
    by_target: dict[str, list[Sample]] = {}
    for sample in samples:
        by_target.setdefault(sample.target, []).append(sample)
    base_samples = by_target.get(baseline, [])
    base = {s.repeat: s for s in base_samples}
    base_ttfb = _pooled(base_samples, "ttfb_us")
    base_chunk = _pooled(base_samples, "chunk_delay_us")
    rows = []
    for name, label in labels.items():
        mine = by_target.get(name, [])
        if not mine:
            continue
        row = Summary(target=name, label=label, rps=[s.load.rps for s in mine])
        row.cpu_us = median([s.cpu_us_per_request for s in mine])
        row.p50_ms = median([s.load.p50_us / 1e3 for s in mine])
        row.p90_ms = median([s.load.p90_us / 1e3 for s in mine])
        row.p99_ms = median([s.load.p99_us / 1e3 for s in mine])
        row.rss_mib = mine[-1].rss_mib if mine[-1].rss_mib is not None else math.nan
        runs = [r for s in mine for r in (s.load, s.latency, s.stream) if r is not None]
        row.errors = sum(r.errors for r in runs) + sum(s.probe.errors for s in mine if s.probe)
        row.requests = sum(r.requests for r in runs)
        streams = [s.stream.rps for s in mine if s.stream is not None]
        row.stream_rps = median(streams)
        row.sse_cpu_us = median([s.cpu_us_per_sse_event for s in mine])
        ttfb, chunk = _pooled(mine, "ttfb_us"), _pooled(mine, "chunk_delay_us")
        row.ttfb_p50_ms = percentile(ttfb, 50) / 1e3
        row.ttfb_p99_ms = percentile(ttfb, 99) / 1e3
        row.chunk_p50_ms = percentile(chunk, 50) / 1e3
        row.chunk_p99_ms = percentile(chunk, 99) / 1e3
        row.chunk_max_ms = percentile(chunk, 100) / 1e3
        if name != baseline:
            row.added_p50_ms = _latency_added(mine, base, "timed_p50_us")
            row.added_p99_ms = _latency_added(mine, base, "timed_p99_us")
            if ttfb and base_ttfb:
                row.ttfb_added_p50_ms = _added(ttfb, base_ttfb, 50)
                row.ttfb_added_p99_ms = _added(ttfb, base_ttfb, 99)
            if chunk and base_chunk:
                row.chunk_added_p50_ms = _added(chunk, base_chunk, 50)
                row.chunk_added_p99_ms = _added(chunk, base_chunk, 99)
        rows.append(row)
    return rows
