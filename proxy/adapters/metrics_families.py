"""Counters, gauges and histograms for the hot path: plain dicts, read at scrape time.

``prometheus_client``'s metrics take a lock on every ``inc``/``observe`` and walk the
buckets in Python; per proxied request that came to several microseconds. Everything
that updates these families runs on the one event loop, and so does the scrape (the
ops listener lives on the same loop), so no lock is needed: an update is a dict lookup
and an add, a histogram observation a ``bisect``. The families are exposed in the same
text format through a collector registered on the composition root's registry.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

Labels = tuple[str, ...]


class LoopCounter:
    __slots__ = ("documentation", "labelnames", "name", "values")

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name  # without the ``_total`` suffix, as prometheus_client spells it
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in self.values.items():
            family.add_metric(list(labels), value)
        return family


class LoopGauge:
    __slots__ = ("documentation", "labelnames", "name", "values")

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.values: dict[Labels, float] = {}

    def add(self, labels: Labels, amount: float) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def collect(self) -> Metric:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in self.values.items():
            family.add_metric(list(labels), value)
        return family


class LoopHistogram:
    """Per label set: one count per bucket (the last is +Inf), then the sum."""

    __slots__ = ("_bounds", "documentation", "labelnames", "name", "values")

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._bounds = tuple(float(bound) for bound in buckets)
        self.values: dict[Labels, list[float]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        counts = self.values.get(labels)
        if counts is None:
            counts = self.values[labels] = [0.0] * (len(self._bounds) + 2)
        # ``le`` buckets: the first bound >= value; past the last bound, +Inf.
        counts[bisect_left(self._bounds, value)] += 1
        counts[-1] += value

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [*(_format(bound) for bound in self._bounds), "+Inf"]
        for labels, counts in self.values.items():
            cumulative, buckets = 0.0, []
            for edge, count in zip(edges, counts, strict=False):
                cumulative += count
                buckets.append((edge, cumulative))
            family.add_metric(list(labels), buckets, sum_value=counts[-1])
        return family


def _format(bound: float) -> str:
    # prometheus_client's spelling of bucket bounds ("0.005", "1.0", "67108864.0").
    return repr(float(bound))


Family = LoopCounter | LoopGauge | LoopHistogram


class LoopFamilies(Collector):
    """The collector that exposes the families on a registry."""

    def __init__(self, families: Sequence[Family]) -> None:
        self._families = tuple(families)

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.collect()


def register(registry: CollectorRegistry, *families: Family) -> None:
    """Expose ``families`` on ``registry`` (which checks their names are unique)."""
    registry.register(LoopFamilies(families))
