"""structlog: the access line's fields, redaction as the last defence, both renderers."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson
import pytest
import structlog

from proxy.adapters.logging_structlog import (
    REDACTED,
    StructlogAccessLog,
    configure_logging,
    path_without_query_values,
    redact_secrets,
)
from proxy.core.exchange import Exchange

SIDECAR_KEY = "llmsc-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
PROVIDER_KEY = "sk-proj-0123456789abcdefSECRET"
GROQ_KEY = "gsk_0123456789abcdefSECRET"
DIGEST = hashlib.sha256(SIDECAR_KEY.encode()).hexdigest()
CONTRACT_FIELDS = {
    "correlation_id",
    "trace_id",
    "tenant",
    "user",
    "upstream",
    "method",
    "path",
    "status",
    "duration_ms",
    "ttfb_ms",
    "model",
    "stream",
    "input_tokens",
    "output_tokens",
}


@pytest.fixture(autouse=True)
def _restore_standard_logging() -> Iterator[None]:
    """configure_logging bridges the root logger; leave it as the next test expects."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers, root.level = handlers, level
    logging.captureWarnings(False)


_open_files: list[TextIO] = []


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    while _open_files:
        _open_files.pop().close()


def _redact(**event: Any) -> dict[str, Any]:
    return dict(redact_secrets(None, "info", event))


class _LogFile:
    """A real file (the JSON writer needs a descriptor) and a bounded wait for a text in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stream = path.open("w")
        _open_files.append(self.stream)

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            content = self.path.read_text()
            if text in content:
                return content
            time.sleep(0.005)  # the writer thread owns the file; poll until it has written
        raise AssertionError(f"{text!r} never written: {self.path.read_text()!r}")


def test_secret_field_names_are_dropped_whatever_their_spelling() -> None:
    """Values under Authorization, X-Api-Key, password... never survive, nested ones included."""
    event = _redact(
        Authorization="anything",
        **{"X-Api-Key": "plain"},
        password="hunter2",
        headers={"cookie": "a=b", "accept": "json"},
    )
    assert event["Authorization"] == REDACTED
    assert event["X-Api-Key"] == REDACTED
    assert event["password"] == REDACTED
    assert event["headers"] == {"cookie": REDACTED, "accept": "json"}


@pytest.mark.parametrize("secret", [SIDECAR_KEY, PROVIDER_KEY, GROQ_KEY, DIGEST, "Bearer abc.def"])
def test_key_shaped_text_is_cut_out_of_any_value(secret: str) -> None:
    """A key, a digest or an auth scheme credential is removed from messages, lists and tuples."""
    event = _redact(
        event=f"upstream said: invalid key {secret}!",
        detail=["x", f"{secret}"],
        pair=("y", {"deep": secret}),
    )
    dump = repr(event)
    assert secret not in dump
    assert event["event"] == f"upstream said: invalid key {REDACTED}!"
    assert event["detail"] == ["x", REDACTED]


def test_ordinary_values_pass_untouched() -> None:
    """Trace ids, paths, words that merely contain "sk-" and numbers are left alone."""
    event = {
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "path": "/openai/v1/chat/completions?task-queue=1",
        "event": "disk-usage task-runner risk-free",
        "status": 200,
        "input_tokens": 12,
    }
    assert _redact(**event) == event


def test_json_access_line_has_every_contract_field_and_span_id(tmp_path: Path) -> None:
    """One JSON object per line: the access line holds the contract's fields plus span_id."""
    log_file = _LogFile(tmp_path / "log")
    configure_logging("info", "json", log_file.stream)
    structlog.contextvars.bind_contextvars(correlation_id="corr-1")
    structlog.get_logger("llm_sidecar.test").info("before", upstream_key=PROVIDER_KEY)
    exchange = Exchange("corr-1", "POST", "/openai/v1/chat/completions", started=0.0)
    exchange.trace_id, exchange.span_id = "a" * 32, "b" * 16
    exchange.status, exchange.tenant, exchange.user = 200, "acme", "alice"
    StructlogAccessLog(lambda: 0.25).request_finished(exchange)
    text = log_file.wait_for('"event":"request"')
    lines = [orjson.loads(line) for line in text.splitlines()]
    before, access = lines
    assert before["correlation_id"] == "corr-1"  # bound by contextvars, on every line
    assert PROVIDER_KEY not in text
    assert CONTRACT_FIELDS | {"span_id", "event", "level", "timestamp"} <= set(access)
    assert access["span_id"] == "b" * 16
    assert access["duration_ms"] == 250.0


def test_access_line_keeps_the_path_but_no_query_value(tmp_path: Path) -> None:
    """A query's values (``?key=...``) never reach the access line; its path and names do."""
    log_file = _LogFile(tmp_path / "log")
    configure_logging("info", "json", log_file.stream)
    query_key = "AIzaSyQueryKey0123456789"
    exchange = Exchange(
        "corr-q",
        "GET",
        f"/gemini/v1/models?key={query_key}&api-version=2024-06-01&{query_key}",
        0.0,
    )
    exchange.status = 200
    StructlogAccessLog(lambda: 0.0).request_finished(exchange)
    text = log_file.wait_for('"event":"request"')
    assert query_key not in text
    assert "2024-06-01" not in text
    (access,) = [orjson.loads(line) for line in text.splitlines()]
    assert access["path"] == "/gemini/v1/models?key=REDACTED&api-version=REDACTED&REDACTED"


@pytest.mark.parametrize(
    ("received", "logged"),
    [
        ("/openai/v1/chat/completions", "/openai/v1/chat/completions"),
        ("-", "-"),
        ("/v1/models?", "/v1/models?"),
        ("/v1/x?a=1&&b=", "/v1/x?a=REDACTED&&b=REDACTED"),
        ("/v1/x?a=1=2#frag", "/v1/x?a=REDACTED"),
    ],
)
def test_path_without_query_values(received: str, logged: str) -> None:
    """Paths without a query are untouched; every query value, however written, is replaced."""
    assert path_without_query_values(received) == logged


def test_levels_below_the_configured_one_are_not_written(tmp_path: Path) -> None:
    """At ``warning`` an info line is filtered before it costs a render."""
    log_file = _LogFile(tmp_path / "log")
    configure_logging("warning", "json", log_file.stream)
    log = structlog.get_logger("llm_sidecar.test")
    log.info("quiet")
    log.warning("loud")
    assert "quiet" not in log_file.wait_for("loud")


def test_console_renderer_writes_redacted_human_lines(tmp_path: Path) -> None:
    """``console`` gives one readable line per event, exceptions included, keys still cut out."""
    log_file = _LogFile(tmp_path / "log")
    configure_logging("info", "console", log_file.stream)
    log = structlog.get_logger("llm_sidecar.test")
    log.info("upstream_error", detail=f"bad key {GROQ_KEY}", status=401)
    try:
        raise ValueError(f"boom with {SIDECAR_KEY}")
    except ValueError:
        log.exception("failed")
    text = log_file.wait_for("failed")
    assert "upstream_error" in text
    assert "status=401" in text
    assert "ValueError" in text
    assert GROQ_KEY not in text
    assert SIDECAR_KEY not in text
    assert not text.lstrip().startswith("{")


def test_standard_logging_records_become_redacted_json_lines(tmp_path: Path) -> None:
    """A library's stdlib log record (traceback included) is one JSON line, keys cut out."""
    log_file = _LogFile(tmp_path / "log")
    configure_logging("info", "json", log_file.stream)
    library = logging.getLogger("aiohttp.server")
    try:
        raise ValueError(f"Invalid header value char: b'Bearer {SIDECAR_KEY}\\r\\n'")
    except ValueError:
        library.exception("Error handling request from %s", "127.0.0.1")
    library.info("below the floor")  # libraries' info is not worth a line
    structlog.get_logger("llm_sidecar.test").warning("after")
    text = log_file.wait_for('"after"')
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert [line["event"] for line in lines] == ["Error handling request from 127.0.0.1", "after"]
    assert lines[0]["logger"] == "aiohttp.server"
    assert "ValueError" in lines[0]["exception"]
    assert SIDECAR_KEY not in text
