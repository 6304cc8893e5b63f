"""Build :class:`OtelTracing` from the standard ``OTEL_*`` variables, and tame export errors.

Read here: ``OTEL_SDK_DISABLED``, ``OTEL_SERVICE_NAME`` (default ``llm-sidecar``),
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``, comma-separated),
``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`` (``http/protobuf`` default, or ``grpc``),
``OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT`` and ``_TIMEOUT``, ``OTEL_TRACES_SAMPLER[_ARG]``.
The exporters read the rest (headers, TLS files, compression) from the process
environment; ``OTEL_PROPAGATORS`` is honoured by OpenTelemetry's own global propagator,
which the tracer injects upstream with. Headers are never captured on spans.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

import structlog
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from proxy.adapters.tracing_otel import OtelTracing
from proxy.core.ports import NoTracer

DEFAULT_SERVICE_NAME = "llm-sidecar"
# Loggers that report every failed batch (and every retry) while a collector is down.
_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.sdk._shared_internal",
)
_log = structlog.get_logger("llm_sidecar.tracing")


class QuietExporter(SpanExporter):
    """One warning when export starts failing, one line when it recovers, silence between."""

    def __init__(self, exporter: SpanExporter, target: str) -> None:
        self._exporter = exporter
        self._target = target
        self._failing = False
        self._closed = False
        self.failed_batches = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._exporter.export(spans)
        except Exception:  # an exporter bug must not kill the batch thread
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            if self._failing:
                self._failing = False
                _log.info("trace_export_recovered", target=self._target)
            return result
        self.failed_batches += 1
        if not self._failing:
            self._failing = True
            _log.warning(
                "trace_export_failing",
                target=self._target,
                detail="spans are dropped until the collector answers; not logged again",
            )
        return result

    def shutdown(self) -> None:
        if not self._closed:  # called twice when a bounded shutdown gave up waiting
            self._closed = True
            self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._exporter.force_flush(timeout_millis)


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


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _signal(env: Mapping[str, str], name: str) -> str | None:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``."""
    return env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}")


def _sampler(env: Mapping[str, str]) -> sampling.Sampler:
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    fixed = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "parentbased_always_on": sampling.DEFAULT_ON,
        "parentbased_always_off": sampling.DEFAULT_OFF,
    }
    if name in fixed:
        return fixed[name]
    if name in ("traceidratio", "parentbased_traceidratio"):
        try:
            ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            _log.warning("otel_sampler_arg_invalid", using=1.0)
            ratio = 1.0
        if name == "traceidratio":
            return sampling.TraceIdRatioBased(ratio)
        return sampling.ParentBasedTraceIdRatio(ratio)
    _log.warning("otel_sampler_unknown", sampler=name, using="parentbased_always_on")
    return sampling.DEFAULT_ON


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


def _otlp(env: Mapping[str, str]) -> SpanExporter:
    protocol = (_signal(env, "PROTOCOL") or "http/protobuf").strip().lower()
    traces_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if protocol == "grpc":
        # Imported only when chosen: grpc is heavy and most sidecars speak OTLP/HTTP.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        endpoint = traces_endpoint or base
        return QuietExporter(
            GrpcExporter(endpoint=endpoint, timeout=_timeout(env)), f"grpc {endpoint}"
        )
    if protocol != "http/protobuf":
        _log.warning("otel_protocol_unsupported", protocol=protocol, using="http/protobuf")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if traces_endpoint is None and base:
        traces_endpoint = base.rstrip("/") + "/v1/traces"
    exporter = OTLPSpanExporter(endpoint=traces_endpoint, timeout=_timeout(env))
    return QuietExporter(exporter, f"http {_origin(traces_endpoint or 'http://localhost:4318')}")


def _origin(url: str) -> str:
    """Scheme, host and port only: an endpoint may embed credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in env.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        name = name.strip().lower()
        if name in ("", "none"):
            continue
        if name == "otlp":
            exporters.append(_otlp(env))
        elif name == "console":
            # stderr, one span per line: stdout is the JSON log stream.
            exporters.append(
                ConsoleSpanExporter(
                    out=sys.stderr, formatter=lambda s: s.to_json(indent=None) + "\n"
                )
            )
        else:
            _log.warning("otel_exporter_unknown", exporter=name)
    return exporters


def tracing_from_env(
    environ: Mapping[str, str] | None = None, *, exporter: SpanExporter | None = None
) -> OtelTracing | NoTracer:
    """The request tracer the environment asks for; ``exporter`` replaces the configured ones.

    ``OTEL_SDK_DISABLED=true`` gives ``NoTracer`` (no spans). With
    ``OTEL_TRACES_EXPORTER=none`` spans are still made and context still propagates.
    """
    env = os.environ if environ is None else environ
    if _flag(env.get("OTEL_SDK_DISABLED")):
        return NoTracer()
    provider = TracerProvider(
        sampler=_sampler(env), resource=_resource(env), shutdown_on_exit=False
    )
    exporters = [exporter] if exporter is not None else _exporters(env)
    processors = [BatchSpanProcessor(item) for item in exporters]
    for processor in processors:
        provider.add_span_processor(processor)
    quiet = any(isinstance(item, QuietExporter) for item in exporters)
    return OtelTracing(
        provider,
        processors,
        on_shutdown=_quiet_export_loggers() if quiet else None,
    )
