"""Assemble :class:`OtelTracing` from the ``OTEL_*`` variables: sampler, resource, sinks.

Imported by ``tracing_otel_setup`` only when tracing is on, so ``OTEL_SDK_DISABLED=true``
loads no OpenTelemetry module at all. Export errors are tamed here: the exporters' own
loggers are muted and :class:`~proxy.adapters.span_sinks.ExportHealth` speaks instead.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import structlog
from opentelemetry.sdk.resources import Resource

from proxy.adapters.otlp_protobuf import OtlpEncoder
from proxy.adapters.span_export import BatchSettings, SpanExportQueue, SpanSink
from proxy.adapters.span_sinks import OtlpHttpSink, SdkSink
from proxy.adapters.tracing_otel import OtelTracing
from proxy.adapters.tracing_sampling import sampler_from_env

if TYPE_CHECKING:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExporter

DEFAULT_SERVICE_NAME = "llm-sidecar"
# Loggers that report every failed batch (and every retry) while a collector is down.
_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk._shared_internal",
)
_log = structlog.get_logger("llm_sidecar.tracing")


class _DropBelowCritical(logging.Filter):
    """Mutes the exporter's per-batch complaints; :class:`QuietExporter` speaks instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL


def _quiet_export_loggers() -> Callable[[], None]:
    """Mute the exporter loggers; returns the undo, run when the tracing shuts down."""
    muted = _DropBelowCritical()
    for name in _EXPORT_LOGGERS:
        logging.getLogger(name).addFilter(muted)

    def undo() -> None:
        for name in _EXPORT_LOGGERS:
            logging.getLogger(name).removeFilter(muted)

    return undo


def _signal(env: Mapping[str, str], name: str) -> str | None:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``."""
    return env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}")


def _resource(env: Mapping[str, str]) -> Resource:
    name = env.get("OTEL_SERVICE_NAME", "").strip()
    if not name and "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        return Resource.create()  # the operator named the service there
    return Resource.create({"service.name": name or DEFAULT_SERVICE_NAME})


def _timeout(env: Mapping[str, str]) -> float | None:
    raw = _signal(env, "TIMEOUT")
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def _otlp(env: Mapping[str, str], resource: Resource) -> SpanSink:
    protocol = (_signal(env, "PROTOCOL") or "http/protobuf").strip().lower()
    traces_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    timeout = _timeout(env)
    if protocol == "grpc":
        # Imported only when chosen: grpc is heavy and most sidecars speak OTLP/HTTP.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        from proxy.adapters.readable_spans import ReadableSpanBuilder

        endpoint = traces_endpoint or base
        exporter = GrpcExporter(endpoint=endpoint, timeout=timeout)
        return SdkSink(ReadableSpanBuilder(resource), exporter, f"grpc {endpoint}")
    if protocol != "http/protobuf":
        _log.warning("otel_protocol_unsupported", protocol=protocol, using="http/protobuf")
    if traces_endpoint is None and base:
        traces_endpoint = base.rstrip("/") + "/v1/traces"

    def make_exporter() -> OTLPSpanExporter:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=traces_endpoint, timeout=timeout)

    target = f"http {_origin(traces_endpoint or 'http://localhost:4318')}"
    return OtlpHttpSink(OtlpEncoder(resource.attributes.items()), make_exporter, target)


def _origin(url: str) -> str:
    """Scheme, host and port only: an endpoint may embed credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"


def _console(resource: Resource) -> SpanSink:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    from proxy.adapters.readable_spans import ReadableSpanBuilder

    # stderr, one span per line: stdout is the JSON log stream.
    exporter = ConsoleSpanExporter(
        out=sys.stderr, formatter=lambda s: s.to_json(indent=None) + "\n"
    )
    return SdkSink(ReadableSpanBuilder(resource), exporter)


def _sinks(env: Mapping[str, str], resource: Resource) -> list[SpanSink]:
    sinks: list[SpanSink] = []
    for name in env.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        name = name.strip().lower()
        if name in ("", "none"):
            continue
        if name == "otlp":
            sinks.append(_otlp(env, resource))
        elif name == "console":
            sinks.append(_console(resource))
        else:
            _log.warning("otel_exporter_unknown", exporter=name)
    return sinks


def build_tracing(env: Mapping[str, str], exporter: SpanExporter | None) -> OtelTracing:
    """The tracer for ``env`` (tracing enabled); ``exporter`` replaces the configured ones."""
    resource = _resource(env)
    if exporter is not None:
        from proxy.adapters.readable_spans import ReadableSpanBuilder

        sinks: list[SpanSink] = [SdkSink(ReadableSpanBuilder(resource), exporter)]
    else:
        sinks = _sinks(env, resource)
    queue = SpanExportQueue(sinks, BatchSettings(env)) if sinks else None
    quiet = any(getattr(sink, "health", None) is not None for sink in sinks)
    return OtelTracing(
        sampler_from_env(env),
        queue,
        on_shutdown=_quiet_export_loggers() if quiet else None,
    )
