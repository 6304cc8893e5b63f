"""Reading a running sidecar's ``/metrics`` the way Prometheus would (its own text parser)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.sidecar import http_get

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(admin_url: str) -> Samples:
    """Every sample of ``/metrics``, keyed by sample name and label set."""
    samples: Samples = {}
    for family in text_string_to_metric_families(http_get(admin_url + "/metrics")):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels`` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def breaker_state(samples: Samples, upstream: str) -> str:
    """The state the breaker Enum reports as current for ``upstream``."""
    name = "llm_sidecar_circuit_breaker_state"
    for (sample, labels), v in samples.items():
        found = dict(labels)
        if sample == name and found.get("upstream") == upstream and v == 1.0:
            return found[name]
    raise AssertionError(f"no breaker state for {upstream!r}")
