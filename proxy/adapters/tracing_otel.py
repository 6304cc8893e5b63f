"""OpenTelemetry tracing: a SERVER span per request and a GenAI CLIENT span per upstream call.

The composition root calls :func:`tracing_from_env` once; nothing here touches
OpenTelemetry's globals (no ``set_tracer_provider``): the provider is an instance.

The client span is made here, as the child of the request's server span, just before
the upstream call, and the configured propagators (``OTEL_PROPAGATORS``) write
``traceparent``/``tracestate``/baggage into the upstream request's headers. It ends
when the response has been relayed, so a stream's usage, response model and id land on
it (ADR 0050). Spans are passed explicitly, never attached to a context: nothing in the
request path reads the current span, and attach/detach costs every request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, get_global_textmap
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util import types

from proxy.adapters import genai_attributes as genai
from proxy.core.exchange import STATUS_CLIENT_CLOSED, Exchange
from proxy.core.ports import Headers

_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
_ERROR = Status(StatusCode.ERROR)
_EMPTY = otel_context.Context()


class _RequestSpans:
    """The handle ``start`` returns (also kept as ``exchange.span``): one request's spans."""

    __slots__ = ("client", "server")

    def __init__(self, server: trace.Span) -> None:
        self.server = server
        self.client: trace.Span | None = None


class _ListSetter(Setter[Headers]):
    """Lets a propagator write into the header list the upstream request is built from."""

    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier.append((key, value))


_SETTER = _ListSetter()


class _CombiningGetter(Getter[Mapping[str, str]]):
    """Reads a header sent several times as one comma-joined value, as RFC 9110 5.3 and
    W3C Trace Context say for ``tracestate`` (the default getter sees only the first)."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        getall = getattr(carrier, "getall", None)
        if getall is None:
            value = carrier.get(key)
            return None if value is None else [value]
        values: list[str] = getall(key, [])
        return [",".join(values)] if values else None

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier.keys())


_GETTER = _CombiningGetter()


class OtelTracing:
    """Implements ``RequestTracer`` with a provider built by the composition root."""

    __slots__ = ("_fields", "_on_shutdown", "_processors", "_propagator", "_provider", "_tracer")

    def __init__(
        self,
        provider: TracerProvider,
        processors: Sequence[BatchSpanProcessor] = (),
        *,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self._provider = provider
        self._on_shutdown = on_shutdown
        self._processors = tuple(processors)
        self._tracer = provider.get_tracer("llm_sidecar")
        # The propagators of OTEL_PROPAGATORS, and the headers they read (traceparent...).
        self._propagator = get_global_textmap()
        self._fields = tuple(self._propagator.fields)

    def start(self, exchange: Exchange, headers: Mapping[str, str]) -> object:
        # Most callers send no trace headers: skip the propagators (~13 us) for them.
        fields = self._fields
        parent = extract(headers, getter=_GETTER) if any(f in headers for f in fields) else _EMPTY
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
        request = _RequestSpans(span)
        span_context = span.get_span_context()
        exchange.trace_id = format(span_context.trace_id, "032x")
        exchange.span_id = format(span_context.span_id, "016x")
        exchange.span = request
        return request

    def upstream_call(self, exchange: Exchange, method: str, url: str, headers: Headers) -> None:
        request = exchange.span
        if not isinstance(request, _RequestSpans):
            return
        if request.client is not None:  # a retry: the previous attempt's span ends failed
            _end_failed_attempt(request.client, exchange)
        operation = genai.operation_name(exchange.path)
        model = exchange.model
        # A query may carry a provider key (``?key=``): the span keeps origin and path.
        full = url.partition("?")[0]
        attrs: dict[str, types.AnyValue] = {
            "http.request.method": method,
            "url.full": full,
            genai.PROVIDER_NAME: genai.provider_name(exchange.upstream or "", exchange.kind),
            genai.CORRELATION_ID: exchange.correlation_id,
        }
        attrs.update(_server_attributes(full))
        if exchange.attempts > 1:
            attrs["http.request.resend_count"] = exchange.attempts - 1
        if exchange.tenant is not None:
            attrs[genai.TENANT] = exchange.tenant
        if operation is not None:
            attrs[genai.OPERATION_NAME] = operation
        if model is not None:
            attrs[genai.REQUEST_MODEL] = model
        name = genai.span_name(operation, model) if operation is not None else method
        server_context = trace.set_span_in_context(request.server, _EMPTY)
        span = self._tracer.start_span(name, server_context, SpanKind.CLIENT, attrs)
        request.client = span
        self._propagator.inject(headers, trace.set_span_in_context(span, _EMPTY), _SETTER)

    def finish(self, exchange: Exchange, handle: object) -> None:
        if not isinstance(handle, _RequestSpans):
            return
        server = handle.server
        client = handle.client
        status = exchange.status
        failed = status >= 500
        if client is not None:
            if client.is_recording():
                _record_response(client, exchange)
                if exchange.ttfb is not None and status != STATUS_CLIENT_CLOSED:
                    client.set_attribute("http.response.status_code", status)
                if failed:
                    client.set_attribute("error.type", str(status))
                    client.set_status(_ERROR)
            client.end()
        if server.is_recording():
            attrs: dict[str, types.AnyValue] = {"http.response.status_code": status}
            if exchange.tenant is not None:
                attrs[genai.TENANT] = exchange.tenant
            if exchange.upstream is not None:
                attrs[genai.UPSTREAM] = exchange.upstream
            if exchange.cost_usd is not None:
                attrs["llm_sidecar.cost_usd"] = exchange.cost_usd
            if failed:
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


_servers: dict[str, dict[str, types.AnyValue]] = {}


def _server_attributes(url: str) -> dict[str, types.AnyValue]:
    """``server.address`` and ``server.port`` of an upstream URL, parsed once per origin."""
    origin = url[: url.find("/", url.find("//") + 2)] if url.count("/") >= 3 else url
    found = _servers.get(origin)
    if found is None:
        parts = urlsplit(origin)
        found = {"server.address": parts.hostname or ""}
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found["server.port"] = port
        if len(_servers) < 256:  # origins come from settings: a handful
            _servers[origin] = found
    return found


def _end_failed_attempt(span: trace.Span, exchange: Exchange) -> None:
    """End a retried attempt's client span with what went wrong (``status_503``...)."""
    outcome = exchange.attempt_log[-1][2] if exchange.attempt_log else "retried"
    if span.is_recording():
        if outcome.startswith("status_"):  # an answer: the exchange still holds its status
            span.set_attribute("http.response.status_code", exchange.status)
            outcome = str(exchange.status)
        span.set_attribute("error.type", outcome)
        span.set_status(_ERROR)
    span.end()


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
