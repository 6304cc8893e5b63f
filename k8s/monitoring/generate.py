"""Writes the monitoring files that are derived from a source, so each has one:

- ``prometheusrule.yaml``: ``rules.yaml`` (the plain rule groups promtool and a
  Prometheus without the operator read) as the spec of a prometheus-operator PrometheusRule;
- ``dashboards/llm-sidecar.json``: the Grafana dashboard, built from ``ROWS`` below;
- ``dashboards/configmap.yaml``: that JSON in a ConfigMap Grafana's sidecar discovers.

Run after editing ``rules.yaml`` or this file::

    python3 k8s/monitoring/generate.py          # rewrite the three files
    python3 k8s/monitoring/generate.py --check  # exit 1 naming any stale file (make test)

Standard library only, so it runs without the project's virtualenv. Panels query the
metrics of docs/reference.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RULES = HERE / "rules.yaml"
PROMETHEUS_RULE = HERE / "prometheusrule.yaml"
DASHBOARD = HERE / "dashboards" / "llm-sidecar.json"
CONFIGMAP = HERE / "dashboards" / "configmap.yaml"

Panel = dict[str, Any]

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
UPSTREAM = 'upstream=~"$upstream"'
TENANT = 'tenant=~"$tenant"'
RATE = "$__rate_interval"
STATE = "llm_sidecar_circuit_breaker_state"
REQUESTS = "llm_sidecar_requests_total"
COST = "llm_sidecar_cost_usd_total"
BUDGET_USED = "llm_sidecar_budget_used_ratio"


def target(expr: str, legend: str = "__auto", *, instant: bool = False) -> dict[str, Any]:
    """One PromQL query of a panel (``refId`` is set when the panel is laid out)."""
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "instant": instant,
        "legendFormat": legend,
        "range": not instant,
    }


def timeseries(
    title: str,
    description: str,
    targets: Sequence[dict[str, Any]],
    unit: str,
    *,
    width: int = 12,
    bars: bool = False,
) -> Panel:
    """A time series panel; ``bars`` for counts per interval rather than rates."""
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 30 if bars else 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
    }
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": width},
        "fieldConfig": {"defaults": {"unit": unit, "min": 0, "custom": custom}, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": list(targets),
    }


def stat(
    title: str, description: str, expr: str, unit: str, red_from: float | None = None
) -> Panel:
    """A single-number panel, red from ``red_from`` on when given."""
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if red_from is not None:
        steps.append({"color": "red", "value": red_from})
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 4, "w": 4},
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "decimals": 2,
                "thresholds": {"mode": "absolute", "steps": steps},
            },
            "overrides": [],
        },
        "options": {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        },
        "targets": [target(expr, title)],
    }


def bargauge(
    title: str,
    description: str,
    expr: str,
    legend: str,
    unit: str,
    *,
    steps: Sequence[tuple[str, float]] = (),
    max_value: float | None = None,
) -> Panel:
    """Horizontal bars of an instant query over the dashboard's time range; ``steps``:
    (colour, from value) after green, ``max_value``: the bars' full length."""
    defaults: dict[str, Any] = {"unit": unit, "min": 0}
    if max_value is not None:
        defaults["max"] = max_value
    if steps:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [
                {"color": "green", "value": None},
                *({"color": color, "value": value} for color, value in steps),
            ],
        }
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "displayMode": "gradient",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
        },
        "targets": [target(expr, legend, instant=True)],
    }


def quantiles(histogram: str) -> list[dict[str, Any]]:
    """p50 and p99 per upstream of a seconds histogram."""
    return [
        target(
            f"histogram_quantile({q}, sum by (upstream, le) "
            f"(rate({histogram}_bucket{{{UPSTREAM}}}[{RATE}])))",
            f"p{round(q * 100)} {{{{upstream}}}}",
        )
        for q in (0.5, 0.99)
    ]


def share(numerator: str, denominator: str) -> str:
    """``numerator / denominator``, 0 rather than no data when nothing was counted above."""
    return f"(sum(rate({numerator}[{RATE}])) or vector(0)) / sum(rate({denominator}[{RATE}]))"


ROWS: list[tuple[str, list[Panel]]] = [
    (
        "Overview",
        [
            stat(
                "Requests/s",
                "Requests the sidecars answered, rejected ones included.",
                f"sum(rate({REQUESTS}{{{UPSTREAM}, {TENANT}}}[{RATE}]))",
                "reqps",
            ),
            stat(
                "5xx share",
                "Share of requests answered with a 5xx (the upstream's or the sidecar's own).",
                share(
                    f'{REQUESTS}{{{UPSTREAM}, {TENANT}, code=~"5.."}}',
                    f"{REQUESTS}{{{UPSTREAM}, {TENANT}}}",
                ),
                "percentunit",
                0.05,
            ),
            stat(
                "Rate-limited share",
                "Share of requests refused by a tenant bucket (429 rate_limit_exceeded).",
                share(
                    f"llm_sidecar_rate_limited_total{{{TENANT}}}",
                    f"{REQUESTS}{{{TENANT}}}",
                ),
                "percentunit",
                0.5,
            ),
            stat(
                "Retries / requests",
                "Retries made per request: above 0.1 an upstream is failing and retries hide it.",
                share(
                    f"llm_sidecar_retries_total{{{UPSTREAM}}}",
                    f'{REQUESTS}{{{UPSTREAM}, upstream!="none"}}',
                ),
                "percentunit",
                0.1,
            ),
            stat(
                "In flight",
                "Upstream calls in progress, streams included.",
                f"sum(llm_sidecar_inflight_requests{{{UPSTREAM}}})",
                "short",
            ),
            stat(
                "Breakers not closed",
                "Sidecar-upstream pairs whose circuit breaker is open or half-open.",
                f'sum({STATE}{{{UPSTREAM}, {STATE}!="closed"}})',
                "short",
                1,
            ),
        ],
    ),
    (
        "Traffic",
        [
            timeseries(
                "Requests/s by upstream and code",
                "Every request, by the upstream that served it (none: rejected before routing)"
                " and the status returned (499: the client went away).",
                [
                    target(
                        f"sum by (upstream, code) "
                        f"(rate({REQUESTS}{{{UPSTREAM}, {TENANT}}}[{RATE}]))",
                        "{{upstream}} {{code}}",
                    )
                ],
                "reqps",
            ),
            timeseries(
                "Errors/s by code",
                "Answers other than 2xx. 401: bad keys; 429: a tenant bucket or the upstream's "
                "limit; 503: breaker open, overloaded, draining or a backend down; 502/504: "
                "the upstream failed or timed out.",
                [
                    target(
                        f"sum by (code) "
                        f'(rate({REQUESTS}{{{UPSTREAM}, {TENANT}, code!~"2.."}}[{RATE}]))',
                        "{{code}}",
                    )
                ],
                "reqps",
            ),
            timeseries(
                "5xx share by upstream",
                "Share of each upstream's requests answered with a 5xx, retries included "
                "(alert LLMSidecarUpstreamErrorRatioHigh above 5 %).",
                [
                    target(
                        f"sum by (upstream) "
                        f'(rate({REQUESTS}{{{UPSTREAM}, {TENANT}, code=~"5.."}}[{RATE}])) '
                        f"/ sum by (upstream) (rate({REQUESTS}{{{UPSTREAM}, {TENANT}}}[{RATE}]))",
                        "{{upstream}}",
                    )
                ],
                "percentunit",
            ),
            timeseries(
                "Upstream calls in flight",
                "Calls from the request's arrival at the upstream to the end of its response.",
                [
                    target(
                        f"sum by (upstream) (llm_sidecar_inflight_requests{{{UPSTREAM}}})",
                        "{{upstream}}",
                    )
                ],
                "short",
            ),
        ],
    ),
    (
        "Latency",
        [
            timeseries(
                "Request duration p50 / p99",
                "From the request's arrival to the end of the response (streams: the last "
                "chunk), as the caller sees it.",
                quantiles("llm_sidecar_request_duration_seconds"),
                "s",
            ),
            timeseries(
                "Time to first byte p50 / p99",
                "From the request's arrival to the upstream's response head (a stream's first "
                "token): the sidecar's auth and buckets, connects, retries and backoff, and the "
                "provider's wait. A non-streamed completion's head comes once it is generated.",
                quantiles("llm_sidecar_upstream_ttfb_seconds"),
                "s",
            ),
        ],
    ),
    (
        "Tokens",
        [
            timeseries(
                "Tokens/s by tenant and model",
                "LLM tokens the upstreams reported (input and output).",
                [
                    target(
                        f"sum by (tenant, model, type) "
                        f"(rate(llm_sidecar_tokens_total{{{UPSTREAM}, {TENANT}}}[{RATE}]))",
                        "{{tenant}} {{model}} {{type}}",
                    )
                ],
                "short",
            ),
            bargauge(
                "Tokens in the time range by tenant and model",
                "Input and output tokens over the dashboard's time range.",
                f"sort_desc(sum by (tenant, model) "
                f"(increase(llm_sidecar_tokens_total{{{UPSTREAM}, {TENANT}}}[$__range])))",
                "{{tenant}} {{model}}",
                "short",
            ),
        ],
    ),
    (
        "Spend",
        [
            timeseries(
                "USD/h by tenant",
                "What responses cost, from their reported usage at the price table's prices "
                "(proxy/prices.json or LLM_SIDECAR_PRICES_FILE), as an hourly rate.",
                [
                    target(
                        f"sum by (tenant) (rate({COST}{{{UPSTREAM}, {TENANT}}}[{RATE}])) * 3600",
                        "{{tenant}}",
                    )
                ],
                "currencyUSD",
                width=8,
            ),
            timeseries(
                "USD/h by model",
                "The same cost by the model that answered (beyond LLM_SIDECAR_MAX_MODEL_LABELS "
                "models: other).",
                [
                    target(
                        f"sum by (model) (rate({COST}{{{UPSTREAM}, {TENANT}}}[{RATE}])) * 3600",
                        "{{model}}",
                    )
                ],
                "currencyUSD",
                width=8,
            ),
            timeseries(
                "Unpriced requests/s by model",
                "Responses with usage whose model has no price: their cost is unknown and "
                "counts in no budget. Add the model to the price table.",
                [
                    target(
                        f"sum by (upstream, model) (rate("
                        f"llm_sidecar_unpriced_requests_total{{{UPSTREAM}}}[{RATE}]))",
                        "{{upstream}} {{model}}",
                    )
                ],
                "reqps",
                width=8,
            ),
            bargauge(
                "Cost in the time range by tenant and model",
                "USD over the dashboard's time range.",
                f"sort_desc(sum by (tenant, model) "
                f"(increase({COST}{{{UPSTREAM}, {TENANT}}}[$__range])))",
                "{{tenant}} {{model}}",
                "currencyUSD",
            ),
            bargauge(
                "Budget used by tenant",
                "Spend of each budgeted tenant's current window (UTC day or month) over its "
                "budget, as the freshest sidecar knows it. Alerts LLMSidecarBudgetNearlySpent "
                "at 80 % and LLMSidecarBudgetSpent at 100 % (callers get 429 "
                "insufficient_quota).",
                f"sort_desc(max by (tenant) ({BUDGET_USED}{{{TENANT}}}))",
                "{{tenant}}",
                "percentunit",
                steps=(("orange", 0.8), ("red", 1)),
                max_value=1,
            ),
        ],
    ),
    (
        "Rate limits and auth",
        [
            timeseries(
                "Requests/s refused by tenant buckets",
                "429 rate_limit_exceeded by tenant; limit is the bucket with the longer wait "
                "(requests: rpm, tokens: tpm).",
                [
                    target(
                        f"sum by (tenant, limit) "
                        f"(rate(llm_sidecar_rate_limited_total{{{TENANT}}}[{RATE}]))",
                        "{{tenant}} {{limit}}",
                    )
                ],
                "reqps",
            ),
            timeseries(
                "Auth failures/s by reason",
                "Keys refused with 401 invalid_api_key: missing, malformed, unknown (or "
                "rotated) and disabled.",
                [
                    target(
                        f"sum by (reason) (rate(llm_sidecar_auth_failures_total[{RATE}]))",
                        "{{reason}}",
                    )
                ],
                "reqps",
            ),
        ],
    ),
    (
        "Resilience",
        [
            timeseries(
                "Breakers not closed by upstream",
                "Sidecars whose breaker for the upstream is open (requests get 503 "
                "circuit_open) or half-open (one probe in flight).",
                [
                    target(
                        f'sum by (upstream, {STATE}) ({STATE}{{{UPSTREAM}, {STATE}!="closed"}})',
                        f"{{{{upstream}}}} {{{{{STATE}}}}}",
                    )
                ],
                "short",
                width=8,
            ),
            timeseries(
                "Breaker transitions",
                "Breaker state changes per interval, by the state entered.",
                [
                    target(
                        f"sum by (upstream, to) (increase("
                        f"llm_sidecar_circuit_breaker_transitions_total{{{UPSTREAM}}}[{RATE}]))",
                        "{{upstream}} to {{to}}",
                    )
                ],
                "short",
                width=8,
                bars=True,
            ),
            timeseries(
                "Upstream attempts/s by outcome",
                "Every attempt, first ones and retries: ok, status_5xx, status_429, "
                "unreachable, reset, timeout.",
                [
                    target(
                        f"sum by (upstream, outcome) "
                        f"(rate(llm_sidecar_upstream_attempts_total{{{UPSTREAM}}}[{RATE}]))",
                        "{{upstream}} {{outcome}}",
                    )
                ],
                "reqps",
                width=8,
            ),
            timeseries(
                "Retries/s by upstream and reason",
                "Retries made, by the upstream whose attempt failed and that attempt's outcome.",
                [
                    target(
                        f"sum by (upstream, reason) "
                        f"(rate(llm_sidecar_retries_total{{{UPSTREAM}}}[{RATE}]))",
                        "{{upstream}} {{reason}}",
                    )
                ],
                "reqps",
                width=8,
            ),
            timeseries(
                "Retries refused by the retry budget",
                "Retries not made because the upstream's budget (RETRY_BUDGET_RATIO of its "
                "requests, at least 3/s per sidecar) was spent: the failure went to the caller.",
                [
                    target(
                        f"sum by (upstream) (increase("
                        f"llm_sidecar_retry_budget_exhausted_total{{{UPSTREAM}}}[{RATE}]))",
                        "{{upstream}}",
                    )
                ],
                "short",
                width=8,
                bars=True,
            ),
            timeseries(
                "Backend errors",
                "Failed user repository lookups (callers get 503 auth_unavailable) and failed "
                "Redis bucket calls (the failure mode decides: own buckets or 503).",
                [
                    target(
                        f"sum(increase(llm_sidecar_repository_errors_total[{RATE}]))",
                        "user repository",
                    ),
                    target(
                        f"sum(increase(llm_sidecar_rate_limiter_backend_errors_total[{RATE}]))",
                        "Redis",
                    ),
                ],
                "short",
                width=8,
                bars=True,
            ),
        ],
    ),
]


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-value label variable with an All option matching any value."""
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "definition": query,
        "query": query,
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
    }


def layout(rows: list[tuple[str, list[Panel]]]) -> list[Panel]:
    """Rows of panels on Grafana's 24-column grid, with ids and refIds assigned."""
    panels: list[Panel] = []
    y = 0
    next_id = 1
    for title, row_panels in rows:
        panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "id": next_id,
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in row_panels:
            width, height = panel["gridPos"]["w"], panel["gridPos"]["h"]
            if x + width > 24:
                x, y, row_height = 0, y + row_height, 0
            panel = {"id": next_id, **panel, "gridPos": {"h": height, "w": width, "x": x, "y": y}}
            for index, query in enumerate(panel["targets"]):
                query["refId"] = chr(ord("A") + index)
            panels.append(panel)
            next_id += 1
            x += width
            row_height = max(row_height, height)
        y += row_height
    return panels


def dashboard() -> dict[str, Any]:
    """The whole dashboard, as Grafana 10/11 saves it (schemaVersion 39)."""
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "llm-sidecar: traffic, errors, latency, tokens, spend and budgets, rate "
        "limits, breakers and retries, from the metrics of docs/reference.md.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": layout(ROWS),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["llm-sidecar"],
        "templating": {
            "list": [
                {
                    "type": "datasource",
                    "name": "datasource",
                    "label": "Data source",
                    "query": "prometheus",
                    "regex": "",
                    "refresh": 1,
                    "hide": 0,
                    "current": {},
                    "options": [],
                },
                variable("upstream", "Upstream", f"label_values({REQUESTS}, upstream)"),
                variable("tenant", "Tenant", f"label_values({REQUESTS}{{{UPSTREAM}}}, tenant)"),
            ]
        },
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "llm-sidecar",
        "uid": "llm-sidecar",
        "version": 1,
        "weekStart": "",
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def configmap_yaml(dashboard_text: str) -> str:
    body = "".join(f"    {line}\n" if line else "\n" for line in dashboard_text.splitlines())
    return (
        "# Generated by k8s/monitoring/generate.py from dashboards/llm-sidecar.json: do not\n"
        "# edit. Grafana's dashboard sidecar (kube-prometheus-stack: grafana.sidecar.\n"
        '# dashboards) loads ConfigMaps labelled grafana_dashboard: "1" from its namespace.\n'
        "# yamllint disable rule:line-length\n"
        "# (the embedded JSON keeps each PromQL query on one line)\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: llm-sidecar-dashboard\n"
        "  labels:\n"
        "    app.kubernetes.io/part-of: llm-sidecar\n"
        '    grafana_dashboard: "1"\n'
        "  annotations:\n"
        "    # Read when the sidecar's folderAnnotation is set to grafana_folder.\n"
        "    grafana_folder: llm-sidecar\n"
        "data:\n"
        "  llm-sidecar.json: |\n" + body
    )


def prometheus_rule_yaml(rules_text: str) -> str:
    lines = rules_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = "".join(f"  {line}\n" if line else "\n" for line in lines[start:])
    return (
        "# Generated by k8s/monitoring/generate.py from rules.yaml: edit that file, then run\n"
        "# python3 k8s/monitoring/generate.py. Runbooks: docs/observability.md.\n"
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        "  name: llm-sidecar\n"
        "  labels:\n"
        "    app.kubernetes.io/part-of: llm-sidecar\n"
        "    # kube-prometheus-stack selects rules by its release label by default.\n"
        "    release: kube-prometheus-stack\n"
        "spec:\n" + body
    )


def outputs() -> dict[Path, str]:
    """Every generated file and the text it should hold."""
    dashboard_text = dashboard_json()
    return {
        PROMETHEUS_RULE: prometheus_rule_yaml(RULES.read_text()),
        DASHBOARD: dashboard_text,
        CONFIGMAP: configmap_yaml(dashboard_text),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        for path in stale:
            print(f"{path.relative_to(HERE.parents[1])} is stale", file=sys.stderr)
        print("run: python3 k8s/monitoring/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
