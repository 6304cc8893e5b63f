"""`/metrics` after real traffic: the contract table, bounded labels, promtool, a Prometheus scrape.

The contract check parses the exposition with prometheus_client's own parser; promtool
and the real Prometheus come from the shared ``tests/integration/prometheus_server.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from proxy.core.ports import NoTracer
from proxy.entrypoints.app import Overrides
from proxy.settings import Settings
from tests.conftest import OPENAI_PROVIDER_KEY
from tests.integration.prometheus_server import (
    make_prometheus_fixture,
    promtool_check_metrics,
    requires_prometheus,
)
from tests.support.fake_upstream import FakeUpstream
from tests.support.inprocess import InProcessSidecar, serve_in_process, user_repository

# Exposed family name -> (type as parsed, label names). prometheus_client appends
# ``_total`` to counters; the parser reports the family without it.
CONTRACT = {
    "llm_sidecar_requests": ("counter", {"upstream", "tenant", "code"}),
    "llm_sidecar_request_duration_seconds": ("histogram", {"upstream"}),
    "llm_sidecar_upstream_ttfb_seconds": ("histogram", {"upstream"}),
    "llm_sidecar_inflight_requests": ("gauge", {"upstream"}),
    "llm_sidecar_tokens": ("counter", {"upstream", "tenant", "model", "type"}),
    "llm_sidecar_rate_limited": ("counter", {"tenant", "limit"}),
    "llm_sidecar_circuit_breaker_state": (
        "gauge",
        {"upstream", "llm_sidecar_circuit_breaker_state"},
    ),
    "llm_sidecar_circuit_breaker_transitions": ("counter", {"upstream", "to"}),
    "llm_sidecar_auth_failures": ("counter", {"reason"}),
    "gen_ai_client_token_usage": (
        "histogram",
        {
            "gen_ai_operation_name",
            "gen_ai_provider_name",
            "gen_ai_request_model",
            "gen_ai_token_type",
        },
    ),
    "gen_ai_client_operation_duration_seconds": (
        "histogram",
        {"gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "error_type"},
    ),
}
CHAT = "/openai/v1/chat/completions?debug=1"


@asynccontextmanager
async def exercised(fake: FakeUpstream) -> AsyncIterator[tuple[InProcessSidecar, str, list[str]]]:
    """A sidecar after ok, 500 (opens the breaker), 503, 429 and 401; yields /metrics text."""
    repository, key = await user_repository(rpm=4)
    settings = Settings(
        upstreams={"openai": {"base_url": fake.url, "api_key": OPENAI_PROVIDER_KEY}},
        database_url="sqlite:///unused.db",
        breaker_failure_threshold=1,
    )
    overrides = Overrides(repository=repository, tracer=NoTracer())
    correlation_ids: list[str] = []
    async with serve_in_process(settings, overrides, key) as sidecar:
        statuses = []
        async with aiohttp.ClientSession() as session:
            for model, auth in [
                ("fake-model", key),
                ("fail-500", key),
                ("fake-model", key),
                ("fake-model", key),
                ("fake-model", key),
                ("fake-model", "llmsc-not-a-key"),
            ]:
                async with session.post(
                    sidecar.url + CHAT,
                    data=orjson.dumps({"model": model, "messages": []}),
                    headers={"Authorization": f"Bearer {auth}", "Content-Type": "application/json"},
                ) as response:
                    statuses.append(response.status)
                    correlation_ids.append(response.headers["X-Correlation-ID"])
                    await response.read()
            async with session.get(sidecar.admin_url + "/metrics") as response:
                text = await response.text()
        assert statuses == [200, 500, 503, 503, 429, 401]
        yield sidecar, text, correlation_ids


async def test_metrics_follow_the_contract_table(upstream: FakeUpstream) -> None:
    """Every contract family is exposed with its type and exactly its label names."""
    async with exercised(upstream) as (_, text, _ids):
        families = {family.name: family for family in text_string_to_metric_families(text)}
    for name, (kind, labels) in CONTRACT.items():
        family = families.get(name)
        assert family is not None, f"{name} missing"
        assert family.type == kind, name
        samples = [s for s in family.samples if not s.name.endswith("_created")]
        assert samples, f"{name} has no samples"
        for sample in samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
    assert "llm_sidecar_requests_total" in text
    requests = {
        s.labels["code"]: s.value
        for s in families["llm_sidecar_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests == {"200": 1.0, "500": 1.0, "503": 2.0, "429": 1.0, "401": 1.0}


async def test_labels_never_hold_keys_paths_or_correlation_ids(upstream: FakeUpstream) -> None:
    """Label values are bounded: no key, no path or query, no correlation id."""
    async with exercised(upstream) as (sidecar, text, ids):
        values = {
            value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            for value in sample.labels.values()
        }
    for value in values:
        assert "/" not in value
        assert "llmsc-" not in value
        assert sidecar.key not in value
        assert value not in ids


async def test_promtool_accepts_the_exposition(upstream: FakeUpstream) -> None:
    """``promtool check metrics`` finds nothing to complain about in ``/metrics``."""
    async with exercised(upstream) as (_, text, _ids):
        pass
    await asyncio.to_thread(promtool_check_metrics, text)


start_prometheus = make_prometheus_fixture()


@requires_prometheus
async def test_prometheus_scrapes_and_answers_queries(
    upstream: FakeUpstream, start_prometheus: Any
) -> None:
    """A real Prometheus scrapes the ops port and answers for requests and GenAI token usage."""
    async with exercised(upstream) as (sidecar, _text, _ids):
        target = sidecar.admin_url.removeprefix("http://")
        prom = await asyncio.to_thread(start_prometheus, [target])
        rows = await prom.wait_for('llm_sidecar_requests_total{code="200",tenant="acme"}')
        assert rows[0]["metric"]["upstream"] == "openai"
        assert rows[0]["value"][1] == "1"
        tokens = await prom.wait_for(
            'gen_ai_client_token_usage_sum{gen_ai_token_type="output",gen_ai_operation_name="chat"}'
        )
        assert tokens[0]["value"][1] == "7"
