"""Spend through a running sidecar: costs in logs and metrics, a $0.01 budget, the 429."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import start_sidecar
from tests.support.fake_upstream import FakeUpstream
from tests.support.sidecar import free_port, http_get

# The fake answers 11 prompt + 7 completion tokens (JSON) or 11 + 6 (stream).
PRICES = {"fake-model": {"input": 100.0, "output": 400.0}}
JSON_COST = (11 * 100.0 + 7 * 400.0) / 1e6  # 0.0039
SSE_COST = (11 * 100.0 + 6 * 400.0) / 1e6  # 0.0035
HEADER = "x-llm-sidecar-budget-remaining-usd"


def _chat(url: str, key: str, *, stream: bool = False, model: str = "fake-model") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    if stream:
        body["stream"] = True
    return httpx.post(
        f"{url}/openai/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def _access_lines(logs: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "request"]


def test_a_one_cent_budget_stops_the_tenant(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    """Three calls fit in $0.01 at these prices, the fourth gets the contract's 429."""
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES))
    process, key = start_sidecar(
        tmp_path / "sidecar",
        fake_upstream,
        LLM_SIDECAR_PRICES_FILE=str(prices),
        LLM_SIDECAR_SPEND_FLUSH_SECONDS="0.2",
    )
    try:
        process.cli("tenants", "update", "acme", "--budget-usd", "0.01")
        process.cli("tenants", "create", "free")
        free_key = process.cli("users", "create", "bob", "--tenant", "free").stdout.split()[-1]
        remaining = []
        for stream in (False, True, False):
            answer = _chat(process.url, key, stream=stream)
            assert answer.status_code == 200, answer.text
            remaining.append(answer.headers[HEADER])
        assert remaining == [
            "0.010000",
            f"{0.01 - JSON_COST:.6f}",
            f"{0.01 - JSON_COST - SSE_COST:.6f}",
        ]
        refused = _chat(process.url, key)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
        assert refused.headers["x-should-retry"] == "false"
        assert refused.headers[HEADER] == "0.000000"
        assert "retry-after" not in refused.headers
        free = _chat(process.url, free_key, model="unpriced-model")
        assert free.status_code == 200
        assert HEADER not in free.headers
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(http_get(process.admin_url + "/metrics"))
            for sample in family.samples
        }
        spent = JSON_COST * 2 + SSE_COST
        cost = (
            "llm_sidecar_cost_usd_total",
            (("model", "fake-model"), ("tenant", "acme"), ("upstream", "openai")),
        )
        assert samples[cost] == pytest.approx(spent, abs=1e-9)
        unpriced = (
            "llm_sidecar_unpriced_requests_total",
            (("model", "unpriced-model"), ("upstream", "openai")),
        )
        assert samples[unpriced] == 1
        assert samples[("llm_sidecar_budget_exceeded_total", (("tenant", "acme"),))] == 1
    finally:
        assert process.stop() == 0, process.logs()
    lines = _access_lines(process.logs())
    costs = [line["cost_usd"] for line in lines if line["tenant"] == "acme"]
    assert costs[:3] == pytest.approx([JSON_COST, SSE_COST, JSON_COST], abs=1e-9)
    assert costs[3] is None
    assert lines[-1]["cost_usd"] is None
    report = json.loads(process.cli("spend", "--tenant", "acme", "--json").stdout)
    assert report["total_cost_usd"] == pytest.approx(spent, abs=1e-9)
    [line] = report["lines"]
    assert (line["user"], line["requests"], line["input_tokens"]) == ("alice", 3, 33)
    table = process.cli("spend", "--window", "day").stdout
    assert "alice" in table
    assert "bob" in table


def test_the_sidecars_own_502_after_admission_says_the_budget(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """An upstream that cannot be reached: the 502 still carries the remaining budget."""
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES))
    process, key = start_sidecar(
        tmp_path / "sidecar",
        fake_upstream,
        LLM_SIDECAR_PRICES_FILE=str(prices),
        LLM_SIDECAR_UPSTREAMS__OPENAI__BASE_URL=f"http://127.0.0.1:{free_port()}",
        LLM_SIDECAR_RETRY_MAX_ATTEMPTS="1",
    )
    try:
        process.cli("tenants", "update", "acme", "--budget-usd", "0.5")
        answer = _chat(process.url, key)
        assert answer.status_code == 502, answer.text
        assert answer.json()["error"]["code"] == "upstream_unreachable"
        assert answer.headers[HEADER] == "0.500000"
    finally:
        assert process.stop() == 0, process.logs()
