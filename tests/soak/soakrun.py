"""Everything a finished soak measured, in one record for the verdict and the report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tests.soak.chaos import OutageRecord
from tests.soak.counters import Reading
from tests.soak.ledger import Ledger
from tests.soak.load import Event
from tests.soak.sampler import Sample, Trend
from tests.soak.traffic import Scenario


@dataclass
class SoakRun:
    """Everything a finished run measured."""

    minutes: float
    concurrency: int
    warmup_seconds: float
    sample_interval_seconds: float
    load_seconds: float
    scenarios: Sequence[Scenario]
    outcomes: Mapping[str, Counter[str]]
    events: Sequence[Event]
    samples: Sequence[Sample]
    rss: Trend
    fds: Trend
    rss_second_half: Trend
    outages: Sequence[OutageRecord]
    outage_seconds: float
    recovery_bound: float
    strict_compressed: bool
    baseline: tuple[str, str]
    probe_counts: Mapping[str, Counter[str]]
    odd_probes: Sequence[tuple[float, str]]
    readings: Sequence[Reading]
    ledger: Ledger | None
    inflight_end: Mapping[str, float]
    idle_fds_before: int
    idle_fds_after: int
    idle_connections: Mapping[str, int]
    """Sockets of the idle sidecar to each peer (keep-alive and pooled connections)."""
    sidecar_exit_code: int | None
    sidecar_died_during_load: bool
    sidecar_metrics: Mapping[str, float]
    setup: Mapping[str, str]
    machine: Mapping[str, str]
    problems: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(sum(counts.values()) for counts in self.outcomes.values())

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.load_seconds if self.load_seconds else 0.0
