"""structlog configuration: one JSON object per line on stdout, written off the event loop.

Lines are rendered on the loop (orjson, a few microseconds) and written by
:class:`~proxy.adapters.log_writer.BatchedLineWriter`, so a slow or blocked stdout (a
full pipe, a stalled log shipper) never stalls request handling.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from proxy.adapters.log_writer import BatchedLineWriter
from proxy.core.exchange import Exchange

_LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Last line of defence: whatever a careless call site passes, these never get out.
# Field names are compared lower-cased with "-" as "_" (so "X-Api-Key" is caught).
_SECRET_FIELDS = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "api_key",
        "apikey",
        "x_api_key",
        "key",
        "password",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "cookie",
        "set_cookie",
    }
)
# Key-shaped text anywhere in a value: provider and sidecar keys, credentials after an
# auth scheme, and bare SHA-256 digests (the form keys are stored in). Compiled once.
_SECRET_TEXT = re.compile(
    r"(?:\b(?:sk|gsk|llmsc|xai|pplx)[-_][A-Za-z0-9_\-]{8,})"
    r"|(?:\b(?:[Bb]earer|BEARER|[Bb]asic|BASIC)\s+[A-Za-z0-9._~+/=\-]+)"
    r"|(?:\b[0-9a-fA-F]{64}\b)"
)
# Every match of _SECRET_TEXT contains one of these (case as written there), or is a
# 64-character digest: cheap substring tests that let most lines skip the regex.
_SECRET_HINTS = ("sk-", "sk_", "gsk", "llmsc", "xai", "pplx", "earer", "EARER", "asic", "ASIC")
_DIGEST_LENGTH = 64
# Values that cannot hold text: skipped before the (slower) container check.
_SCALARS = frozenset({int, float, bool, type(None)})
_MAX_DEPTH = 4
REDACTED = "[redacted]"
# What replaces each query value in the access line's ``path`` (OpenTelemetry's word for
# it in ``url.query``): a query may carry a provider key (``?key=``, ``?api-key=``).
QUERY_VALUE_REDACTED = "REDACTED"


def _may_hold_secret(text: str, longest: int) -> bool:
    if longest < _DIGEST_LENGTH:
        for hint in _SECRET_HINTS:
            if hint in text:
                break
        else:
            return False
    return _SECRET_TEXT.search(text) is not None


def _scrubbed(value: Any, depth: int = 0) -> Any:
    """``value`` with key-shaped text replaced, looking into containers a few levels deep."""
    if isinstance(value, str):
        return _SECRET_TEXT.sub(REDACTED, value) if _SECRET_TEXT.search(value) else value
    if depth >= _MAX_DEPTH or not isinstance(value, dict | list | tuple):
        return value
    if isinstance(value, dict):
        return {
            key: REDACTED if _secret_field(key) else _scrubbed(item, depth + 1)
            for key, item in value.items()
        }
    return type(value)(_scrubbed(item, depth + 1) for item in value)


def _secret_field(name: object) -> bool:
    return isinstance(name, str) and name.lower().replace("-", "_") in _SECRET_FIELDS


# Which names of a line's field set are secret, memoised per field set: call sites log
# the same fields every time, so the access line pays one tuple and one dict lookup.
_secret_names_of: dict[tuple[str, ...], tuple[str, ...]] = {}
_MAX_FIELD_SETS = 1024


def _secret_names(names: tuple[str, ...]) -> tuple[str, ...]:
    secret = _secret_names_of.get(names)
    if secret is None:
        secret = tuple(name for name in names if _secret_field(name))
        if len(_secret_names_of) < _MAX_FIELD_SETS:
            _secret_names_of[names] = secret
    return secret


def redact_secrets(_logger: object, _method: str, event: MutableMapping[str, Any]) -> Any:
    """Drop values under secret-sounding names; cut key-shaped text out of every other value.

    The common case (nothing key-shaped anywhere) costs a few substring tests over all
    the line's strings joined; the regex runs only when one of them hits.
    """
    for name in _secret_names(tuple(event)):
        event[name] = REDACTED
    strings = []
    longest = 0
    for name, value in event.items():
        kind = type(value)
        if kind is str:
            strings.append(value)
            if len(value) > longest:
                longest = len(value)
        elif kind not in _SCALARS and isinstance(value, dict | list | tuple):
            event[name] = _scrubbed(value)
    if strings and _may_hold_secret("\x00".join(strings), longest):
        for name, value in event.items():
            if isinstance(value, str):
                event[name] = _scrubbed(value)
    return event


class _UtcTimestamp:
    """``timestamp`` in ISO 8601 UTC with microseconds, formatting the date once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _logger: object, _method: str, event: MutableMapping[str, Any]) -> Any:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Configure structlog once, in the process entrypoint (never at import)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _UtcTimestamp(),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    if fmt == "console":
        renderer: Any = structlog.dev.ConsoleRenderer(colors=False)
        writer_factory: Any = structlog.PrintLoggerFactory(stream or sys.stdout)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        writer = BatchedLineWriter(stream)

        def writer_factory(*_args: Any) -> BatchedLineWriter:
            return writer

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=writer_factory,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _StandardLoggingBridge)]
    root.addHandler(_StandardLoggingBridge())
    logging.captureWarnings(True)  # a library's DeprecationWarning is a JSON line too
    root.setLevel(max(_LEVELS[level], logging.WARNING))  # libraries' info/debug is noise here


class _StandardLoggingBridge(logging.Handler):
    """Records of libraries that log through ``logging`` (aiohttp, asyncio, OpenTelemetry)
    become lines of the same stream, in the same format, through the same redaction: a
    stray traceback never splits the JSON stream or carries a key out."""

    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger(record.name).log(
            record.levelno, record.getMessage(), logger=record.name, exc_info=record.exc_info
        )


def path_without_query_values(path: str) -> str:
    """``path`` as received, with every query value replaced by ``REDACTED``.

    ``/v1/models?key=abc&api-version=1&flag`` becomes
    ``/v1/models?key=REDACTED&api-version=REDACTED&REDACTED``: the parameter names stay
    (they say what the caller sent), no value does, as none reaches a span either.
    """
    start = path.find("?")
    if start < 0:
        return path
    parameters = path[start + 1 :].split("&")
    for index, parameter in enumerate(parameters):
        if parameter:
            name, equals, _value = parameter.partition("=")
            parameters[index] = f"{name}={QUERY_VALUE_REDACTED}" if equals else QUERY_VALUE_REDACTED
    return path[: start + 1] + "&".join(parameters)


class StructlogAccessLog:
    """Writes the one access line per request (``event: "request"``)."""

    __slots__ = ("_clock", "_logger")

    def __init__(self, clock: Any) -> None:
        # Bound now, after ``configure_logging``, rather than through the lazy proxy
        # ``get_logger`` returns: each line skips the proxy's lookup (~1.3 µs of ~15).
        self._logger = structlog.get_logger("llm_sidecar.access").bind()
        self._clock = clock

    def upstream_started(self, exchange: Exchange) -> None:
        return None

    def first_byte(self, exchange: Exchange) -> None:
        return None

    def request_finished(self, exchange: Exchange) -> None:
        ttfb = exchange.ttfb
        log = exchange.attempt_log
        self._logger.info(
            "request",
            correlation_id=exchange.correlation_id,
            trace_id=exchange.trace_id,
            span_id=exchange.span_id,
            tenant=exchange.tenant,
            user=exchange.user,
            upstream=exchange.upstream,
            method=exchange.method,
            path=path_without_query_values(exchange.path),
            status=exchange.status,
            duration_ms=round((self._clock() - exchange.started) * 1000, 3),
            ttfb_ms=round(ttfb * 1000, 3) if ttfb is not None else None,
            model=exchange.model,
            stream=exchange.stream,
            input_tokens=exchange.input_tokens,
            output_tokens=exchange.output_tokens,
            cost_usd=exchange.cost_usd,
            attempts=exchange.attempts,
            endpoint=exchange.endpoint,
            # Every attempt's outcome, only when there was more than one.
            attempt_outcomes=[f"{u}/{e}:{o}" for u, e, o in log] if len(log) > 1 else None,
        )
