"""k8s/monitoring on its own: the alert rules through promtool (check and unit tests), one
source for each generated file, runbooks for every alert, and a dashboard that queries only
the metric contract of docs/reference.md and honours its variables.

The dashboard's queries against real data: tests/integration/test_dashboard.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.prometheus_server import PROMTOOL_BIN
from tests.k8s.monitoring import (
    CONFIGMAP,
    DASHBOARD,
    GENERATOR,
    OBSERVABILITY,
    PROMETHEUS_RULE,
    RULES,
    TARGET_LABELS,
    UNIT_TESTS,
    alerts,
    as_promql,
    contract,
    dashboard,
    github_anchor,
    grouping_labels,
    headings,
    panels,
    queries,
    selectors,
    variable_queries,
)

requires_promtool = pytest.mark.skipif(
    PROMTOOL_BIN is None and not os.environ.get("CI"),
    reason="promtool is not installed (make test installs Debian's prometheus package)",
)
SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_SECTION = "Alerts and runbooks"


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run promtool; in CI a missing binary fails here instead of skipping."""
    assert PROMTOOL_BIN is not None, "promtool is not installed"
    return subprocess.run(
        [PROMTOOL_BIN, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def test_generated_files_match_their_sources() -> None:
    """prometheusrule.yaml and both dashboard files are what generate.py makes of their sources."""
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_prometheus_rule_spec_is_the_rules_file() -> None:
    """The PrometheusRule's spec is exactly rules.yaml, and kube-prometheus-stack selects it."""
    (rule,) = [doc for doc in yaml.safe_load_all(PROMETHEUS_RULE.read_text()) if doc]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


@requires_promtool
def test_promtool_checks_the_rules_file_and_the_prometheus_rule_spec(tmp_path: Path) -> None:
    """``promtool check rules`` accepts rules.yaml and the spec taken out of the PrometheusRule."""
    (rule,) = [doc for doc in yaml.safe_load_all(PROMETHEUS_RULE.read_text()) if doc]
    extracted = tmp_path / "prometheusrule-spec.yaml"
    extracted.write_text(yaml.safe_dump(rule["spec"]))
    for path in (RULES, extracted):
        result = promtool("check", "rules", path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


@requires_promtool
def test_promtool_unit_tests_pass() -> None:
    """``promtool test rules`` passes every unit test file under k8s/monitoring/tests."""
    assert UNIT_TESTS
    result = promtool("test", "rules", *UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    """Each alert has a promtool case where it fires and one where it must stay silent."""
    firing: dict[str, int] = defaultdict(int)
    silent: dict[str, int] = defaultdict(int)
    for path in UNIT_TESTS:
        document = yaml.safe_load(path.read_text())
        assert document["rule_files"] == ["../rules.yaml"], path
        for group in document["tests"]:
            for case in group.get("alert_rule_test", []):
                counts = firing if case.get("exp_alerts") else silent
                counts[case["alertname"]] += 1
    names = [alert["alert"] for alert in alerts()]
    assert len(names) == len(set(names)), "alert names repeat"
    for name in names:
        assert firing[name] >= 1, f"{name}: no case where it fires"
        assert silent[name] >= 1, f"{name}: no case where it stays silent"
    assert set(firing) | set(silent) <= set(names), "a unit test names an unknown alert"


def test_every_alert_has_severity_annotations_and_a_runbook() -> None:
    """Severity, summary, description, and a runbook_url that is a heading of the runbooks."""
    text = OBSERVABILITY.read_text()
    assert f"\n## {RUNBOOK_SECTION}\n" in text
    section = text.split(f"\n## {RUNBOOK_SECTION}\n", 1)[1].split("\n## ", 1)[0]
    runbooks = {github_anchor(title) for level, title in headings(section) if level == 3}
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        annotations = alert["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert all(annotations.values()), name
        document, _, anchor = annotations["runbook_url"].partition("#")
        assert document == "docs/observability.md", name
        assert anchor == github_anchor(name), f"{name}: runbook anchor {anchor!r}"
        assert anchor in runbooks, f"{name}: no '### {name}' under '## {RUNBOOK_SECTION}'"


def all_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert and every dashboard query and variable."""
    found = [(f"alert {alert['alert']}", alert["expr"]) for alert in alerts()]
    found += [(f"panel {query.name}", query.expr) for query in queries()]
    found += [(f"variable {name}", as_promql(q)[0]) for name, q in variable_queries().items()]
    return found


def test_queries_use_only_contract_metrics_and_labels() -> None:
    """Every series and label the rules and the dashboard name is in docs/reference.md."""
    series = contract()
    problems = []
    for where, expr in all_exprs():
        labels_in_expr: set[str] = set()
        for selector in selectors(expr):
            if selector.metric not in series:
                problems.append(f"{where}: {selector.metric} is not in the contract")
                continue
            known = series[selector.metric] | TARGET_LABELS
            unknown = set(selector.matchers) - known
            problems += [f"{where}: {selector.metric} has no label {name}" for name in unknown]
            labels_in_expr |= known
        unknown = grouping_labels(expr) - labels_in_expr
        problems += [f"{where}: groups by unknown label {name}" for name in unknown]
    assert not problems, "\n".join(problems)


def test_dashboard_has_datasource_upstream_and_tenant_variables() -> None:
    """schemaVersion 39; a Prometheus datasource variable; multi-value upstream and tenant."""
    board = dashboard()
    assert board["schemaVersion"] == 39
    assert board["uid"] == "llm-sidecar"
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("upstream", "tenant"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variable["multi"] is True
        assert variable["includeAll"] is True
        assert variable["allValue"] == ".*"
        assert as_promql(variable_queries(board)[name])[1] == name


def test_dashboard_panels_use_the_datasource_variable_and_fit_the_grid() -> None:
    """Every panel and target reads ${datasource}; ids are unique; nothing overlaps."""
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
    for panel in panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_dashboard_covers_the_issue_list() -> None:
    """Traffic, errors, latency, tokens, cost, budgets, limits, breakers, retries, in-flight."""
    used = {selector.metric for query in queries() for selector in selectors(query.expr)}
    assert used >= {
        "llm_sidecar_requests_total",
        "llm_sidecar_request_duration_seconds_bucket",
        "llm_sidecar_upstream_ttfb_seconds_bucket",
        "llm_sidecar_tokens_total",
        "llm_sidecar_rate_limited_total",
        "llm_sidecar_circuit_breaker_state",
        "llm_sidecar_circuit_breaker_transitions_total",
        "llm_sidecar_upstream_attempts_total",
        "llm_sidecar_retries_total",
        "llm_sidecar_retry_budget_exhausted_total",
        "llm_sidecar_inflight_requests",
        "llm_sidecar_cost_usd_total",
        "llm_sidecar_unpriced_requests_total",
        "llm_sidecar_budget_used_ratio",
    }
    quantiles = [query.expr for query in queries() if "histogram_quantile" in query.expr]
    for histogram in ("request_duration_seconds", "upstream_ttfb_seconds"):
        for q in ("0.5", "0.99"):
            assert any(f"({q}," in e and histogram in e for e in quantiles), (histogram, q)


def test_dashboard_queries_honour_the_upstream_and_tenant_variables() -> None:
    """Series with an upstream (tenant) label are filtered on $upstream ($tenant), all of a
    query's alike: none only where another series of the query lacks the label (a ratio of
    retries, which have no tenant, to requests is not narrowed to a tenant)."""
    series = contract()
    problems = []
    for query in queries():
        found = selectors(query.expr)
        for label in ("upstream", "tenant"):
            able = [s for s in found if label in series[s.metric]]
            filtered = [s for s in able if f'=~"${label}"' in s.matchers.get(label, [])]
            if len(able) == len(found) and len(filtered) < len(able):
                problems.append(f"{query.name}: not every series is filtered on ${label}")
            elif filtered and len(filtered) < len(able):
                problems.append(f"{query.name}: some series are filtered on ${label}, not all")
    assert not problems, "\n".join(problems)


def test_configmap_embeds_the_dashboard_for_grafanas_sidecar() -> None:
    """The ConfigMap carries the dashboard JSON byte for byte, labelled for discovery."""
    (configmap,) = [doc for doc in yaml.safe_load_all(CONFIGMAP.read_text()) if doc]
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    data: dict[str, Any] = configmap["data"]
    assert list(data) == ["llm-sidecar.json"]
    assert data["llm-sidecar.json"] == DASHBOARD.read_text()
    assert json.loads(data["llm-sidecar.json"]) == dashboard()
