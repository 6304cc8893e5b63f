"""OpenTelemetry tracing: a SERVER span per request and a GenAI CLIENT span per upstream call.

The composition root calls :func:`tracing_from_env` once; nothing here touches
OpenTelemetry's globals (no ``set_tracer_provider``): the provider is an instance
handed to both our tracer and the aiohttp-client instrumentation.

The client span is made by ``opentelemetry-instrumentation-aiohttp-client``'s trace
config, which injects ``traceparent`` upstream, but ends it when the response *head*
arrives: before the usage of a stream is known. Its tracer is therefore wrapped so that
the span it gets for a proxied request is *held*: the instrumentation's ``end()`` is a
no-op and :meth:`OtelTracing.finish` ends the real span once the response has been
relayed, with the response model, id and token usage on it (docs/adr/0050).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation._semconv import _StabilityMode
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.propagate import extract, get_global_textmap
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util import types
from yarl import URL

from proxy.adapters import genai_attributes as genai
from proxy.core.exchange import Exchange

_REQUEST_KEY = otel_context.create_key("llm_sidecar.request")
# Header values the client span may never hold, even when an operator turns on header
# capture (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST=".*").
SENSITIVE_HEADERS = (
    "authorization",
    "proxy-authorization",
    ".*api[-_]?key.*",
    ".*token.*",
    ".*secret.*",
    "cookie",
    "set-cookie",
)
_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
_ERROR = Status(StatusCode.ERROR)
_EMPTY = otel_context.Context()


class _RequestSpans:
    """The handle ``start`` returns: one request's spans and its context token."""

    __slots__ = ("client", "exchange", "server", "token")

    def __init__(self, exchange: Exchange, server: trace.Span) -> None:
        self.exchange = exchange
        self.server = server
        self.client: trace.Span | None = None
        self.token: object = None


class _HeldClientSpan(trace.Span):
    """The client span as the instrumentation sees it: everything but ``end`` goes through."""

    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def end(self, end_time: int | None = None) -> None:
        return None  # OtelTracing.finish ends the real span once usage is known.

    def get_span_context(self) -> trace.SpanContext:
        return self._span.get_span_context()

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        self._span.set_attributes(attributes)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        self._span.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        self._span.add_event(name, attributes, timestamp)

    def update_name(self, name: str) -> None:
        self._span.update_name(name)

    def is_recording(self) -> bool:
        return self._span.is_recording()

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self._span.set_status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self._span.record_exception(exception, attributes, timestamp, escaped)


class _ClientTracer(trace.Tracer):
    """Names the instrumentation's span after the GenAI call and holds it for ``finish``."""

    __slots__ = ("_tracer",)

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        request = otel_context.get_value(_REQUEST_KEY, context)
        if not isinstance(request, _RequestSpans) or request.client is not None:
            return self._tracer.start_span(
                name, context, kind, attributes, links, start_time, record_exception
            )
        exchange = request.exchange
        attrs: dict[str, types.AnyValue] = dict(attributes or {})
        attrs[genai.PROVIDER_NAME] = genai.provider_name(exchange.upstream or "")
        attrs[genai.CORRELATION_ID] = exchange.correlation_id
        if exchange.tenant is not None:
            attrs[genai.TENANT] = exchange.tenant
        operation = genai.operation_name(exchange.path)
        if operation is not None:
            attrs[genai.OPERATION_NAME] = operation
            name = genai.span_name(operation, exchange.model)
        if exchange.model is not None:
            attrs[genai.REQUEST_MODEL] = exchange.model
        span = self._tracer.start_span(name, context, kind, attrs, links, start_time)
        request.client = span
        return _HeldClientSpan(span)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._tracer.start_as_current_span(*args, **kwargs)


class _ClientTracerProvider(trace.TracerProvider):
    """What the aiohttp-client instrumentation gets instead of the provider itself."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self._provider = provider

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> trace.Tracer:
        return _ClientTracer(
            self._provider.get_tracer(
                instrumenting_module_name, instrumenting_library_version, schema_url, attributes
            )
        )


def _url_without_query(url: URL) -> str:
    # A query may carry a provider key (``?key=``); the span keeps origin and path only.
    return str(url.with_query(None).with_fragment(None))


class OtelTracing:
    """Implements ``RequestTracer``; ``trace_configs`` go to the upstream sessions."""

    __slots__ = ("_fields", "_on_shutdown", "_processors", "_provider", "_tracer", "trace_configs")

    def __init__(
        self,
        provider: TracerProvider,
        processors: Sequence[BatchSpanProcessor] = (),
        *,
        captured_request_headers: Sequence[str] = (),
        captured_response_headers: Sequence[str] = (),
        sensitive_headers: Sequence[str] = (),
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self._provider = provider
        self._on_shutdown = on_shutdown
        self._processors = tuple(processors)
        self._tracer = provider.get_tracer("llm_sidecar")
        # The headers the configured propagators (OTEL_PROPAGATORS) read: traceparent...
        self._fields = tuple(get_global_textmap().fields)
        self.trace_configs: tuple[aiohttp.TraceConfig, ...] = (
            create_trace_config(
                url_filter=_url_without_query,
                tracer_provider=_ClientTracerProvider(provider),
                # The HTTP client metrics of the instrumentation are not wanted: Prometheus
                # has ours. A no-op meter makes their recording free.
                meter_provider=NoOpMeterProvider(),
                sem_conv_opt_in_mode=_StabilityMode.HTTP,
                captured_request_headers=list(captured_request_headers) or None,
                captured_response_headers=list(captured_response_headers) or None,
                sensitive_headers=[*SENSITIVE_HEADERS, *sensitive_headers],
            ),
        )

    def start(self, exchange: Exchange, headers: Mapping[str, str]) -> object:
        # Most callers send no trace headers: skip the propagators (~13 us) for them.
        fields = self._fields
        parent = extract(headers) if any(f in headers for f in fields) else _EMPTY
        method = exchange.method if exchange.method in _KNOWN_METHODS else "_OTHER"
        path = exchange.path
        end = path.find("?")
        span = self._tracer.start_span(
            method if method != "_OTHER" else "HTTP",
            parent,
            SpanKind.SERVER,
            {
                "http.request.method": method,
                "url.path": path if end < 0 else path[:end],
                genai.CORRELATION_ID: exchange.correlation_id,
            },
        )
        request = _RequestSpans(exchange, span)
        context = otel_context.set_value(
            _REQUEST_KEY, request, trace.set_span_in_context(span, parent)
        )
        request.token = otel_context.attach(context)
        span_context = span.get_span_context()
        exchange.trace_id = format(span_context.trace_id, "032x")
        exchange.span_id = format(span_context.span_id, "016x")
        return request

    def finish(self, exchange: Exchange, handle: object) -> None:
        if not isinstance(handle, _RequestSpans):
            return
        otel_context.detach(handle.token)  # type: ignore[arg-type]
        server = handle.server
        client = handle.client
        if client is not None:
            if client.is_recording():
                _record_response(client, exchange)
            client.end()
        if server.is_recording():
            status = exchange.status
            attrs: dict[str, types.AnyValue] = {"http.response.status_code": status}
            if exchange.tenant is not None:
                attrs[genai.TENANT] = exchange.tenant
            if exchange.upstream is not None:
                attrs[genai.UPSTREAM] = exchange.upstream
            if status >= 500:
                attrs["error.type"] = str(status)
                server.set_status(_ERROR)
            server.set_attributes(attrs)
        server.end()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._provider.force_flush(timeout_millis)

    def shutdown(self, timeout_seconds: float = 2.0) -> None:
        """Export what is queued, bounded: a dead collector cannot hold up the exit."""
        for processor in self._processors:
            # The processor's own shutdown waits up to 30 s on an exporter that retries.
            flushing = threading.Thread(target=processor.shutdown, name="otel-flush", daemon=True)
            flushing.start()
            flushing.join(timeout_seconds)
            if flushing.is_alive():
                processor.span_exporter.shutdown()  # aborts the retry back-off
        self._provider.shutdown()
        if self._on_shutdown is not None:
            self._on_shutdown()


def _record_response(span: trace.Span, exchange: Exchange) -> None:
    attrs: dict[str, types.AnyValue] = {}
    if exchange.response_model is not None:
        attrs[genai.RESPONSE_MODEL] = exchange.response_model
    if exchange.response_id is not None:
        attrs[genai.RESPONSE_ID] = exchange.response_id
    if exchange.input_tokens is not None:
        attrs[genai.INPUT_TOKENS] = exchange.input_tokens
    if exchange.output_tokens is not None:
        attrs[genai.OUTPUT_TOKENS] = exchange.output_tokens
    if attrs:
        span.set_attributes(attrs)
