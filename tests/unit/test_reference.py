"""docs/reference.md against the code: nothing public undocumented, nothing documented gone.

Each side is derived independently: the reference's tables (one name per row, in
backticks in the first column, under a known heading) and the code's own objects
(``Settings.model_fields``, the CLI's argparse parser, the ``ProxyError`` tree and every
``code="..."`` passed to it, a fresh ``SidecarMetrics`` registry, an access line, the
ops and webhook routers, the injector's configuration model and names).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import pkgutil
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from structlog.testing import capture_logs

import proxy
from proxy.adapters.logging_structlog import StructlogAccessLog
from proxy.adapters.metrics_families import LoopCounter, LoopGauge, LoopHistogram
from proxy.adapters.metrics_prometheus import SidecarMetrics
from proxy.core.errors import ProxyError
from proxy.core.exchange import Exchange
from proxy.core.service import ProxyService
from proxy.entrypoints.cli import build_parser
from proxy.entrypoints.ops import create_ops_app
from proxy.injector import config as injector_config
from proxy.injector.config import InjectorConfig
from proxy.injector.webhook import create_webhook_app
from proxy.settings import ENV_PREFIX, NESTED_DELIMITER, Settings, UpstreamSettings

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"
PROXY_ROOT = Path(proxy.__file__).resolve().parent
INJECTOR_PREFIX = f"{ENV_PREFIX}INJECTOR_"
# How the reference writes an upstream's fields: LLM_SIDECAR_UPSTREAMS__<NAME>__BASE_URL.
UPSTREAM_VARIABLE = f"{ENV_PREFIX}UPSTREAMS{NESTED_DELIMITER}<NAME>{NESTED_DELIMITER}"
# configure_logging adds these to every line; capture_logs, which the test uses, does not.
PROCESSOR_FIELDS = frozenset({"level", "timestamp"})
# A default longer than this is described in words in the reference, not spelt out.
LONGEST_SHOWN_DEFAULT = 120
# Names the code may hold before the reference does. Empty: every name is documented the
# day it lands (add one here only for a feature landing across several commits).
BEING_BUILT: frozenset[str] = frozenset()
_BACKTICKED = re.compile(r"`([^`]+)`")
_STATUS = re.compile(r"\b[1-5]\d\d\b")


@dataclass(frozen=True, slots=True)
class Row:
    """One table row of the reference: ``name`` is the first backticked text of its first cell."""

    name: str
    cells: tuple[str, ...]

    def tokens(self, column: int) -> list[str]:
        return _BACKTICKED.findall(self.cells[column])


def _section(title: str) -> list[Row]:
    """The table rows under the ``##`` or ``###`` heading ``title``, subsections included."""
    lines = REFERENCE.read_text(encoding="utf-8").splitlines()
    starts = [
        index
        for index, line in enumerate(lines)
        if line.lstrip("#") != line and line.lstrip("#").strip() == title
    ]
    assert len(starts) == 1, f"docs/reference.md needs exactly one heading {title!r}"
    level = len(lines[starts[0]]) - len(lines[starts[0]].lstrip("#"))
    rows: list[Row] = []
    table: list[str] = []
    fenced = False
    for line in [*lines[starts[0] + 1 :], ""]:
        if line.startswith("```"):
            fenced = not fenced
        heading = len(line) - len(line.lstrip("#"))
        if not fenced and 0 < heading <= level and line[heading : heading + 1] == " ":
            break
        if line.startswith("|") and not fenced:
            table.append(line)
            continue
        rows.extend(_table_rows(table))
        table = []
    rows.extend(_table_rows(table))
    return rows


def _table_rows(table: list[str]) -> Iterator[Row]:
    if not table:
        return
    header = _cells(table[0])
    for line in table[2:]:  # after the header and the | --- | line
        cells = _cells(line)
        assert len(cells) == len(header), f"a '|' inside a cell of docs/reference.md: {line}"
        names = _BACKTICKED.findall(cells[0])
        assert names, f"no `name` in the first cell of docs/reference.md: {line}"
        yield Row(names[0], cells)


def _cells(line: str) -> tuple[str, ...]:
    return tuple(cell.strip() for cell in line.strip().strip("|").split("|"))


def _by_name(rows: list[Row], *, prefix: str = "") -> dict[str, Row]:
    chosen = [row for row in rows if row.name.startswith(prefix)]
    names = [row.name for row in chosen]
    twice = sorted({name for name in names if names.count(name) > 1})
    assert not twice, f"documented twice in docs/reference.md: {twice}"
    return {row.name: row for row in chosen}


def _assert_same(what: str, documented: set[str], in_code: set[str]) -> set[str]:
    """Fails unless both sides hold the same names; returns the tolerated ``BEING_BUILT`` ones."""
    pending = {name for name in in_code - documented if name.split()[0] in BEING_BUILT}
    missing = in_code - documented - pending
    assert not missing, f"{what} in the code but not in docs/reference.md: {sorted(missing)}"
    assert not documented - in_code, (
        f"{what} in docs/reference.md but not in the code: {sorted(documented - in_code)}"
    )
    return pending


def _shown(field: FieldInfo) -> str | None:
    """How the reference's default cell starts for ``field``; ``None``: described in words."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, dict | list | tuple):
        text = json.dumps(value)
    else:
        text = str(value)
    return f"`{text}`" if len(text) <= LONGEST_SHOWN_DEFAULT else None


def _assert_defaults(rows: dict[str, Row], fields: dict[str, FieldInfo]) -> None:
    wrong = {}
    for name, field in fields.items():
        if name not in rows:
            continue  # a BEING_BUILT name, reported by _assert_same
        expected, cell = _shown(field), rows[name].cells[1]
        if expected is not None and not cell.startswith(expected):
            wrong[name] = f"starts {cell[: len(expected) + 10]!r}, expected {expected!r}"
    assert not wrong, f"defaults in docs/reference.md differ from the code: {wrong}"


def _setting_fields() -> dict[str, FieldInfo]:
    fields = {
        f"{ENV_PREFIX}{name.upper()}": field
        for name, field in Settings.model_fields.items()
        if name != "upstreams"
    }
    for name, field in UpstreamSettings.model_fields.items():
        fields[f"{UPSTREAM_VARIABLE}{name.upper()}"] = field
    return fields


def _check_settings() -> set[str]:
    fields = _setting_fields()
    rows = _by_name(_section("Settings"), prefix=ENV_PREFIX)
    pending = _assert_same("settings", set(rows), set(fields))
    _assert_defaults(rows, fields)
    return pending


def test_every_setting_is_documented_with_its_default() -> None:
    """Each LLM_SIDECAR_ variable the settings model reads is in the reference, default included."""
    _check_settings()


def _leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield " ".join(path), parser
    for group in groups:
        for name, child in group.choices.items():
            yield from _leaf_commands(child, (*path, name))


def _arguments(parser: argparse.ArgumentParser) -> set[str]:
    """``--rpm N``, ``--json``, ``NAME``: every argument as the reference writes it."""
    spelt = set()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
        if not action.option_strings:
            spelt.add(metavar)
            continue
        option = max(action.option_strings, key=len)
        spelt.add(option if action.nargs == 0 else f"{option} {metavar}")
    return spelt


def _check_commands() -> set[str]:
    commands = dict(_leaf_commands(build_parser()))
    rows = _by_name(_section("Command line"))
    pending = _assert_same("commands", set(rows), set(commands))
    for name, parser in commands.items():
        if name in rows:
            documented = set(rows[name].tokens(1))
            pending |= _assert_same(f"arguments of {name!r}", documented, _arguments(parser))
    return pending


def test_every_command_and_flag_is_documented() -> None:
    """The reference lists each leaf command of ``llm-sidecar`` with exactly its arguments."""
    _check_commands()


def _import_all_of_proxy() -> None:
    for module in pkgutil.walk_packages(proxy.__path__, "proxy."):
        if module.name != "proxy.__main__":  # it runs the CLI
            importlib.import_module(module.name)


def _error_classes() -> dict[str, type[ProxyError]]:
    _import_all_of_proxy()
    found, pending = {ProxyError.__name__: ProxyError}, [ProxyError]
    while pending:
        for subclass in pending.pop().__subclasses__():
            same_name = found.setdefault(subclass.__name__, subclass)
            assert same_name is subclass, f"two ProxyError classes named {subclass.__name__}"
            pending.append(subclass)
    return found


def _codes_in_code() -> dict[str, set[tuple[int, str]]]:
    """Every ``code`` the sidecar can answer with, and its ``(status, type)``."""
    classes = _error_classes()
    codes: dict[str, set[tuple[int, str]]] = defaultdict(set)
    for error in classes.values():
        codes[error.code].add((error.status, error.error_type))
    unreadable = []
    for path in sorted(PROXY_ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for name, value in _code_arguments(node, classes):
                if isinstance(value, str):
                    codes[value].add((classes[name].status, classes[name].error_type))
                else:
                    unreadable.append(f"{path.relative_to(PROXY_ROOT)}:{value}")
    assert not unreadable, f"pass error codes as string literals, to be listed: {unreadable}"
    return codes


def _code_arguments(node: ast.AST, classes: dict[str, Any]) -> Iterator[tuple[str, str | int]]:
    """``(class name, code)`` of ``ErrorClass(..., code="...")``; a line number if not a literal."""
    if not isinstance(node, ast.Call):
        return
    callee = node.func
    name = callee.id if isinstance(callee, ast.Name) else getattr(callee, "attr", None)
    if name not in classes:
        return
    for keyword in node.keywords:
        value = keyword.value
        if keyword.arg != "code" or (isinstance(value, ast.Constant) and value.value is None):
            continue
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            yield name, value.value
        else:
            yield name, node.lineno


def _check_errors() -> set[str]:
    codes = _codes_in_code()
    rows = _by_name(_section("Errors"))
    pending = _assert_same("error codes", set(rows), set(codes))
    for code, pairs in codes.items():
        if code in pending:
            continue
        statuses = {int(status) for status in _STATUS.findall(rows[code].cells[1])}
        assert statuses == {status for status, _ in pairs}, f"status of {code!r}"
        assert set(rows[code].tokens(2)) == {kind for _, kind in pairs}, f"type of {code!r}"
    return pending


def test_every_error_code_is_documented_with_its_status_and_type() -> None:
    """Each ``code`` a ProxyError can carry is in the error table, with its status and type."""
    _check_errors()


def _metric_labels(metrics: SidecarMetrics) -> dict[str, tuple[str, ...]]:
    """Label names per family name (as registered), read off the ``SidecarMetrics`` attributes."""
    labels = {}
    for value in vars(metrics).values():
        if isinstance(value, LoopCounter | LoopGauge | LoopHistogram):
            labels[value.name] = tuple(value.labelnames)
        elif isinstance(value, MetricWrapperBase):
            labels[value._name] = tuple(value._labelnames)
    return labels


def _check_metrics() -> set[str]:
    registry = CollectorRegistry()
    labels = _metric_labels(SidecarMetrics(registry))
    families = {}
    for family in registry.collect():
        assert family.name in labels, f"{family.name}: not an attribute of SidecarMetrics"
        exposed = f"{family.name}_total" if family.type == "counter" else family.name
        kind = {"stateset": "enum"}.get(family.type, family.type)
        families[exposed] = (kind, labels[family.name])
    rows = _by_name(_section("Metrics"))
    pending = _assert_same("metrics", set(rows), set(families))
    for name, (kind, labelnames) in families.items():
        if name in pending:
            continue
        assert rows[name].cells[1].split()[0] == kind, f"type of {name}"
        assert tuple(rows[name].tokens(2)) == labelnames, f"labels of {name}, in order"
    return pending


def test_every_metric_family_is_documented_with_its_type_and_labels() -> None:
    """Each family of a fresh registry is documented by exposed name, with its type and labels."""
    _check_metrics()


def _check_access_log() -> set[str]:
    exchange = Exchange("corr-1", "POST", "/openai/v1/chat/completions", 0.0)
    with capture_logs() as lines:
        StructlogAccessLog(lambda: 1.0).request_finished(exchange)
    (line,) = lines
    assert line["event"] == "request"
    fields = (set(line) - {"log_level"}) | PROCESSOR_FIELDS
    return _assert_same("access-log fields", set(_by_name(_section("Access log"))), fields)


def test_every_access_log_field_is_documented() -> None:
    """The access line's fields are exactly the reference's access-log table."""
    _check_access_log()


def _paths(app: Any) -> set[str]:
    return {resource.canonical for resource in app.router.resources()}


async def _always_ready() -> bool:
    return True


def test_ops_and_webhook_routes_are_documented() -> None:
    """The ops listener's and the injector webhook's routes are the reference's."""
    # The handlers are never called: a service is not needed to read the router.
    ops = create_ops_app(cast(ProxyService, None), CollectorRegistry(), _always_ready)
    _assert_same("ops routes", set(_by_name(_section("Ops listener"))), _paths(ops))
    webhook = create_webhook_app(InjectorConfig())
    _assert_same("webhook routes", set(_by_name(_section("Webhook routes"))), _paths(webhook))


def _injector_variables() -> set[str]:
    """String literals naming an ``LLM_SIDECAR_INJECTOR_*`` variable anywhere in ``proxy/``."""
    pattern = re.compile(rf"{INJECTOR_PREFIX}[A-Z0-9_]+")
    return {
        node.value
        for path in PROXY_ROOT.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and pattern.fullmatch(node.value)
    }


def test_injector_variables_and_file_keys_are_documented() -> None:
    """The injector's variables and configuration-file keys (defaults included) are documented."""
    variables = _by_name(_section("Injector variables"))
    _assert_same("injector variables", set(variables), _injector_variables())
    fields = {field.alias or name: field for name, field in InjectorConfig.model_fields.items()}
    rows = _by_name(_section("Injector configuration file"))
    _assert_same("injector configuration keys", set(rows), set(fields))
    _assert_defaults(rows, fields)


def test_pod_labels_and_annotations_are_documented() -> None:
    """Every ``llm-sidecar.io/`` label or annotation the injector reads or writes is documented."""
    names = {
        value
        for value in vars(injector_config).values()
        if isinstance(value, str) and value.startswith("llm-sidecar.io/")
    }
    rows = _by_name(_section("Pod labels and annotations"))
    _assert_same("pod labels and annotations", set(rows), names)
