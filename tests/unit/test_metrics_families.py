"""Loop families expose exactly what prometheus_client's own metrics would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from proxy.adapters.metrics_families import LoopCounter, LoopGauge, LoopHistogram, register

BUCKETS = (0.005, 0.1, 1, 2.5, 60)


def _without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]


@given(st.lists(st.floats(min_value=0, max_value=500, allow_nan=False), max_size=40))
def test_histogram_matches_prometheus_client(values: list[float]) -> None:
    """Same observations, same buckets, sum and count, bound for bound (``le`` inclusive)."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histogram = LoopHistogram("h_seconds", "doc", ["upstream"], BUCKETS)
    register(ours, histogram)
    reference = Histogram("h_seconds", "doc", ["upstream"], buckets=BUCKETS, registry=theirs)
    for value in [*values, *BUCKETS]:  # the bounds themselves land in their own bucket
        histogram.observe(("openai",), value)
        reference.labels("openai").observe(value)
    assert _without_created(generate_latest(ours)) == _without_created(generate_latest(theirs))


def test_counter_and_gauge_match_prometheus_client() -> None:
    """Counters gain ``_total``; gauges go up and down; labels render identically."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = LoopCounter("requests", "doc", ["upstream", "code"])
    gauge = LoopGauge("inflight", "doc", ["upstream"])
    register(ours, counter, gauge)
    reference_counter = Counter("requests", "doc", ["upstream", "code"], registry=theirs)
    reference_gauge = Gauge("inflight", "doc", ["upstream"], registry=theirs)
    for code in ("200", "200", "429"):
        counter.inc(("groq", code))
        reference_counter.labels("groq", code).inc()
    gauge.add(("groq",), 1)
    gauge.add(("groq",), 1)
    gauge.add(("groq",), -1)
    reference_gauge.labels("groq").inc(1)
    assert _without_created(generate_latest(ours)) == _without_created(generate_latest(theirs))
