"""The Grafana dashboard and the alert rules against real data: a real Prometheus scrapes a
running sidecar (``llm-sidecar serve``) every second while mixed traffic goes through it,
then answers every panel query and every alert expression.

Traffic, in two rounds a scrape apart so that rates have something to compare: answers,
a stream, the upstream's 429s retried until the retry budget runs out, groq's 503 and 500
opening its breaker and then its 503 ``circuit_open``, a small tenant's 429s from its
bucket, a bad key (401) and an unknown upstream (404); ``fake-model`` has no price
(unpriced requests), and a tenant with a budget spends a little of it on the priced
``gpt-4o-mini`` (cost, budget used). Grafana's variables become
``.*`` (every upstream, every tenant) and ``$__rate_interval`` one minute.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.conftest import sidecar_env
from tests.integration.prometheus_server import (
    PrometheusServer,
    Row,
    requires_prometheus,
    running_prometheus,
)
from tests.k8s.monitoring import Query, alerts, as_promql, expand, queries, variable_queries
from tests.support.fake_upstream import FakeUpstream
from tests.support.sidecar import SidecarProcess

pytestmark = requires_prometheus
CHAT = "/v1/chat/completions"
# The budget's floor is 30 retries in 10 s; each of these requests makes 2.
RETRY_BUDGET_FLOOR = 30
FAILING_429S = RETRY_BUDGET_FLOOR // 2 + 2
PRICED_MODEL = "gpt-4o-mini"  # in proxy/prices.json; the fake echoes the model it is asked


@dataclass(frozen=True)
class Scraped:
    prom: PrometheusServer
    statuses: dict[int, int]
    """How many answers of each status the traffic got."""


def call(url: str, key: str, model: str, *, stream: bool = False) -> int:
    """POST a chat completion and read the whole answer; its status."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    request = urllib.request.Request(  # noqa: S310 - the sidecar on loopback
        url,
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310
            response.read()
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def wait_until(prom: PrometheusServer, expr: str, within: float = 15.0) -> list[Row]:
    """Poll an instant query until it has a result."""
    deadline = time.monotonic() + within
    while not (rows := prom.query(expr)):
        assert time.monotonic() < deadline, f"{expr!r} stayed empty:\n{prom.log_tail()}"
        time.sleep(0.2)
    return rows


def drive(sidecar: SidecarProcess, keys: tuple[str, str, str], statuses: dict[int, int]) -> None:
    """One round of the mixed traffic described in the module docstring."""
    acme, tiny, metered = keys
    openai, groq = sidecar.url + "/openai" + CHAT, sidecar.url + "/groq/openai" + CHAT
    calls = [
        *[(openai, metered, PRICED_MODEL, False)] * 2,  # a budget: spent a little
        (openai, acme, PRICED_MODEL, False),
        (openai, acme, "fake-model", False),
        (openai, acme, "fake-model", True),
        (groq, acme, "fake-model", False),
        (groq, acme, "fail-503", False),  # three attempts, two retries
        (groq, acme, "fail-500", False),
        (groq, acme, "fail-500", False),  # five failures in a row: groq's breaker opens
        *[(groq, acme, "fake-model", False)] * 6,  # 503 circuit_open while it is open
        *[(openai, tiny, "fake-model", False)] * 4,  # rpm 2: 429 from the tenant bucket
        (openai, "llmsc-not-a-key", "fake-model", False),
        (sidecar.url + "/nowhere" + CHAT, acme, "fake-model", False),
    ]
    for url, key, model, stream in calls:
        status = call(url, key, model, stream=stream)
        statuses[status] = statuses.get(status, 0) + 1
    for _ in range(FAILING_429S):  # the upstream's 429, retried on the lone endpoint
        status = call(openai, acme, "fail-429")
        statuses[status] = statuses.get(status, 0) + 1
        time.sleep(0.02)  # past the endpoint's 10 ms cool-down, so the next one is sent


@pytest.fixture(scope="module")
def scraped(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scraped]:
    """A sidecar with three tenants, scraped every second through two rounds of traffic."""
    workdir: Path = tmp_path_factory.mktemp("dashboard")
    sidecar = SidecarProcess(
        workdir,
        env=sidecar_env(
            fake_upstream,
            LLM_SIDECAR_DEFAULT_RPM="100000",
            # Retries wait for the fake's 10 ms hint, not up to 2 s of backoff.
            LLM_SIDECAR_RETRY_MAX_BACKOFF_SECONDS="0.05",
        ),
    )
    acme = sidecar.create_user("acme", "alice", "--tpm", "100000000")
    tiny = sidecar.create_user("tiny", "bob", "--rpm", "2")
    metered = sidecar.create_user(
        "metered", "carol", "--budget-usd", "0.001", "--budget-window", "month"
    )
    keys = (acme, tiny, metered)
    sidecar.start()
    statuses: dict[int, int] = {}
    try:
        with running_prometheus([f"127.0.0.1:{sidecar.admin_port}"]) as prom:
            wait_until(prom, 'up{job="llm-sidecar"} == 1')
            drive(sidecar, keys, statuses)
            wait_until(prom, 'llm_sidecar_requests_total{tenant="tiny", code="429"}')
            drive(sidecar, keys, statuses)
            total = sum(statuses.values())
            wait_until(prom, f"sum(llm_sidecar_requests_total) == {total}")
            yield Scraped(prom, statuses)
    finally:
        assert sidecar.stop() == 0, sidecar.logs()


def test_traffic_got_every_kind_of_answer(scraped: Scraped) -> None:
    """The rounds produced answers, 401, 404, 429, 500 and 503, so every panel has data."""
    assert {200, 401, 404, 429, 500, 503} <= set(scraped.statuses), scraped.statuses


@pytest.mark.parametrize("query", queries(), ids=lambda query: query.name)
def test_dashboard_query_returns_data(scraped: Scraped, query: Query) -> None:
    """The panel's query, variables expanded, answers with at least one number."""
    rows = scraped.prom.query(expand(query.expr))
    assert rows, f"{query.name}: no data for {expand(query.expr)}"
    values = [float(row["value"][1]) for row in rows]
    assert any(math.isfinite(value) for value in values), (query.name, rows)


@pytest.mark.parametrize("name", sorted(variable_queries()))
def test_dashboard_variables_list_the_values_seen(scraped: Scraped, name: str) -> None:
    """label_values() of each variable lists the upstreams and tenants the traffic used."""
    expr, label = as_promql(variable_queries()[name])
    found = {row["metric"][label] for row in scraped.prom.query(expand(expr))}
    expected = {"upstream": {"openai", "groq"}, "tenant": {"acme", "tiny"}}[name]
    assert expected <= found, found


@pytest.mark.parametrize("alert", alerts(), ids=lambda alert: alert["alert"])
def test_alert_expression_evaluates(scraped: Scraped, alert: dict[str, str]) -> None:
    """Prometheus evaluates the alert's expression over the scraped series without error."""
    scraped.prom.query(alert["expr"])


@pytest.mark.parametrize(
    ("name", "label", "value"),
    [
        ("LLMSidecarCircuitBreakerOpen", "upstream", "groq"),
        ("LLMSidecarUpstreamErrorRatioHigh", "upstream", "groq"),
        ("LLMSidecarRetryBudgetExhausted", "upstream", "openai"),
        ("LLMSidecarTenantThrottled", "tenant", "tiny"),
    ],
)
def test_alert_expression_matches_the_fault_caused(
    scraped: Scraped, name: str, label: str, value: str
) -> None:
    """Where the traffic caused the alert's condition, its expression selects the culprit."""
    (alert,) = [alert for alert in alerts() if alert["alert"] == name]
    rows = scraped.prom.query(alert["expr"])
    assert [row["metric"].get(label) for row in rows] == [value], rows


def test_budget_used_ratio_is_the_budgeted_tenants_spend_over_its_budget(scraped: Scraped) -> None:
    """Only the budgeted tenant has the gauge: what it spent (its cost) over its $0.001."""
    rows = scraped.prom.query("llm_sidecar_budget_used_ratio")
    assert [row["metric"]["tenant"] for row in rows] == ["metered"], rows
    (cost,) = scraped.prom.query('sum(llm_sidecar_cost_usd_total{tenant="metered"})')
    spent = float(cost["value"][1])
    assert spent > 0
    assert float(rows[0]["value"][1]) == pytest.approx(spent / 0.001, rel=1e-6)
