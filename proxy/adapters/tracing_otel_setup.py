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

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from proxy.core.ports import NoTracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from proxy.adapters.tracing_otel import OtelTracing


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def tracing_from_env(
    environ: Mapping[str, str] | None = None, *, exporter: SpanExporter | None = None
) -> OtelTracing | NoTracer:
    """The request tracer the environment asks for; ``exporter`` replaces the configured ones.

    ``OTEL_SDK_DISABLED=true`` gives ``NoTracer`` (no spans, and no OpenTelemetry module
    imported). With ``OTEL_TRACES_EXPORTER=none`` no spans are sent, but ids are drawn
    and context still propagates.
    """
    env = os.environ if environ is None else environ
    if _flag(env.get("OTEL_SDK_DISABLED")):
        return NoTracer()
    from proxy.adapters.tracing_otel_build import build_tracing

    return build_tracing(env, exporter)
