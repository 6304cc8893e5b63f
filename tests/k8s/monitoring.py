"""Reading k8s/monitoring: the alert rules, the dashboard's queries, and the metric contract.

Shared by ``tests/k8s/test_monitoring.py`` (the files on their own, promtool) and
``tests/integration/test_dashboard.py`` (every query against a real Prometheus that
scraped a running sidecar). The contract is the Metrics table of docs/reference.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "k8s" / "monitoring"
RULES = MONITORING / "rules.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
UNIT_TESTS = sorted((MONITORING / "tests").glob("*.yaml"))
DASHBOARD = MONITORING / "dashboards" / "llm-sidecar.json"
CONFIGMAP = MONITORING / "dashboards" / "configmap.yaml"
GENERATOR = MONITORING / "generate.py"
REFERENCE = ROOT / "docs" / "reference.md"
OBSERVABILITY = ROOT / "docs" / "observability.md"

# Labels Prometheus (a scrape config or the operator's PodMonitor) puts on every target.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "endpoint"})
# What a test puts for Grafana's variables: every value of a label, and short windows
# (the traffic of a test lasts seconds, and Prometheus scrapes it every second).
GRAFANA_VALUES = {
    "upstream": ".*",
    "tenant": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
}
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_NAME = re.compile(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b")
_LABEL_VALUES = re.compile(r"^label_values\((.*),\s*(\w+)\)$")
_METRIC_ROW = re.compile(r"^\| `([a-z_:]+)` \| ([^|]+) \| ([^|]+) \|")
_BACKTICKED = re.compile(r"`([^`]+)`")
# PromQL words that look like metric names in an expression.
_PROMQL_WORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "le",
        "sum",
        "count",
        "group",
        "max",
        "min",
        "avg",
        "rate",
        "increase",
        "histogram_quantile",
        "absent",
        "vector",
        "sort_desc",
        "max_over_time",
    }
)


def alerts() -> list[dict[str, Any]]:
    """Every alerting rule of rules.yaml, in file order."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, the ones inside collapsed rows included, rows themselves excluded."""
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


@dataclass(frozen=True)
class Query:
    """One PromQL query of the dashboard, as Grafana has it (variables unexpanded)."""

    panel: str
    ref_id: str
    expr: str
    instant: bool

    @property
    def name(self) -> str:
        return f"{self.panel} [{self.ref_id}]"


def queries(board: dict[str, Any] | None = None) -> list[Query]:
    """Every target of every panel."""
    board = dashboard() if board is None else board
    return [
        Query(panel["title"], target["refId"], target["expr"], bool(target.get("instant")))
        for panel in panels(board)
        for target in panel["targets"]
    ]


def variable_queries(board: dict[str, Any] | None = None) -> dict[str, str]:
    """The ``label_values(...)`` query of each query variable, by variable name."""
    board = dashboard() if board is None else board
    found = {}
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found[variable["name"]] = query["query"] if isinstance(query, dict) else query
    return found


def expand(expr: str, values: dict[str, str] | None = None) -> str:
    """``expr`` with Grafana's ``$var`` / ``${var}`` replaced; fails on an unknown one."""
    values = GRAFANA_VALUES if values is None else values

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"{expr!r} uses ${name}, which the tests do not know")
        return values[name]

    return _VARIABLE.sub(value, expr)


def as_promql(variable_query: str) -> tuple[str, str]:
    """Grafana's ``label_values(selector, label)`` as a PromQL query, and the label."""
    match = _LABEL_VALUES.match(variable_query)
    if match is None:
        raise ValueError(f"not a label_values() query: {variable_query!r}")
    selector, label = match.groups()
    return f"group by ({label}) ({selector})", label


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: dict[str, list[str]]
    """Label name -> its matchers as written, e.g. ``{"upstream": ['=~"$upstream"']}``."""


def selectors(expr: str) -> list[Selector]:
    """The metric selectors of a PromQL expression (a light parse: enough for our rules)."""
    found = []
    rest = _SELECTOR.sub(" ", expr)
    for metric, body in _SELECTOR.findall(expr):
        matchers: dict[str, list[str]] = {}
        for name, op, value in _MATCHER.findall(body):
            matchers.setdefault(name, []).append(f'{op}"{value}"')
        found.append(Selector(metric, matchers))
    rest = _GROUPING.sub(" ", rest)
    rest = re.sub(r'"(?:[^"\\]|\\.)*"', " ", rest)  # strings (the quantile's le, ...)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # range durations
    for name in _NAME.findall(rest):
        if name not in _PROMQL_WORDS and not name[0].isdigit():
            found.append(Selector(name, {}))
    return found


def grouping_labels(expr: str) -> set[str]:
    """Label names in ``by (...)`` and ``without (...)`` clauses."""
    return {
        label.strip()
        for clause in _GROUPING.findall(expr)
        for label in clause.split(",")
        if label.strip()
    }


def contract() -> dict[str, frozenset[str]]:
    """Series name -> label names, from docs/reference.md's Metrics table.

    Histograms give their ``_bucket`` (with ``le``), ``_sum`` and ``_count`` series; the
    breaker enum's state label has the family's own name. ``up`` is Prometheus' own.
    """
    section = REFERENCE.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    series: dict[str, frozenset[str]] = {"up": frozenset()}
    for line in section.splitlines():
        row = _METRIC_ROW.match(line)
        if row is None:
            continue
        name, kind, label_cell = row.groups()
        labels = frozenset(_BACKTICKED.findall(label_cell))
        if kind.strip() == "histogram":
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_sum"] = labels
            series[f"{name}_count"] = labels
        elif kind.strip().startswith("enum"):
            series[name] = labels | {name}
        else:
            series[name] = labels
    return series


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(markdown: str) -> list[tuple[int, str]]:
    """(level, text) of every ATX heading outside fenced code blocks."""
    found = []
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"^(#{1,6}) (.+)$", line)):
            found.append((len(match.group(1)), match.group(2)))
    return found
