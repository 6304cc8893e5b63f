"""OpenTelemetry tracing: a SERVER span per request and a GenAI CLIENT span per attempt.

On the request path this module only does what cannot wait: it continues the caller's
trace (``OTEL_PROPAGATORS``), takes the sampling decision, draws the W3C ids, sends the
upstream a ``traceparent`` naming the attempt's span, and notes clocks and a few values
in a :class:`RequestRecord`. Spans are built from finished records on the export thread
(``span_export``), as OTLP bytes or SDK spans; the SDK's live-span machinery is not on
the hot path at all (ADR 0053). The composition root calls ``tracing_from_env`` once;
nothing here touches OpenTelemetry's globals except reading the configured propagator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from random import getrandbits
from time import time_ns

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, get_global_textmap
from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator

from proxy.adapters import genai_attributes as genai
from proxy.adapters.span_export import SpanExportQueue
from proxy.adapters.span_records import AttemptRecord, RequestRecord
from proxy.adapters.tracing_sampling import Sampler
from proxy.core.exchange import STATUS_CLIENT_CLOSED, Exchange
from proxy.core.ports import Headers

_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
_EMPTY = otel_context.Context()


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


def _new_id(bits: int) -> int:
    """A random non-zero id, as the SDK's ``RandomIdGenerator`` draws them."""
    value = getrandbits(bits)
    while not value:
        value = getrandbits(bits)
    return value


def _traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def _inject_w3c(headers: Headers, record: RequestRecord, span_id: int) -> None:
    """What the default propagators (``tracecontext,baggage``) write for a span context."""
    headers.append(("traceparent", _traceparent(record.trace_id, span_id, record.sampled)))
    if record.trace_state:
        headers.append(("tracestate", record.trace_state))


def _context_of(record: RequestRecord, span_id: int) -> otel_context.Context:
    state = trace.TraceState.from_header([record.trace_state]) if record.trace_state else None
    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if record.sampled else 0)
    span = trace.SpanContext(record.trace_id, span_id, False, flags, state)
    return trace.set_span_in_context(trace.NonRecordingSpan(span), _EMPTY)


def _writes_plain_w3c(propagator: TextMapPropagator) -> bool:
    """Does the configured propagator write exactly ``_inject_w3c``'s headers?

    Probed once by example rather than by type, so a custom ``OTEL_PROPAGATORS`` (b3,
    jaeger...) always takes the propagator's own path.
    """
    probe = RequestRecord(0x0AF7651916CD43DD8448EB211C80319C, 1, 0, "k=v", True, 0, "", "", "")
    expected: Headers = []
    _inject_w3c(expected, probe, 0xB7AD6B7169203331)
    written: Headers = []
    propagator.inject(written, _context_of(probe, 0xB7AD6B7169203331), _SETTER)
    return written == expected


class OtelTracing:
    """Implements ``RequestTracer``: records on the request path, spans on the export thread."""

    __slots__ = ("_fast_inject", "_fields", "_on_shutdown", "_propagator", "_queue", "_sampler")

    def __init__(
        self,
        sampler: Sampler,
        queue: SpanExportQueue | None,
        *,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self._sampler = sampler
        self._queue = queue
        self._on_shutdown = on_shutdown
        # The propagators of OTEL_PROPAGATORS, and the headers they read (traceparent...).
        self._propagator = get_global_textmap()
        self._fields = tuple(self._propagator.fields)
        self._fast_inject = _writes_plain_w3c(self._propagator)

    @property
    def queue(self) -> SpanExportQueue | None:
        return self._queue

    def start(self, exchange: Exchange, headers: Mapping[str, str]) -> object:
        parent_sampled: bool | None = None
        parent_id = 0
        trace_id = 0
        state = ""
        # Most callers send no trace headers: skip the propagators (~13 us) for them.
        if any(field in headers for field in self._fields):
            parent = trace.get_current_span(extract(headers, getter=_GETTER)).get_span_context()
            if parent.is_valid:
                trace_id = parent.trace_id
                parent_id = parent.span_id
                parent_sampled = parent.trace_flags.sampled
                state = parent.trace_state.to_header()
        if not trace_id:
            trace_id = _new_id(128)
        span_id = _new_id(64)
        method = exchange.method if exchange.method in _KNOWN_METHODS else "_OTHER"
        path = exchange.path
        end = path.find("?")
        record = RequestRecord(
            trace_id,
            span_id,
            parent_id,
            state,
            self._sampler(parent_sampled, trace_id),
            time_ns(),
            method,
            path if end < 0 else path[:end],
            exchange.correlation_id,
        )
        exchange.trace_id = f"{trace_id:032x}"
        exchange.span_id = f"{span_id:016x}"
        exchange.span = record
        return record

    def upstream_call(self, exchange: Exchange, method: str, url: str, headers: Headers) -> None:
        record = exchange.span
        if type(record) is not RequestRecord:
            return
        span_id = _new_id(64)
        if record.sampled:
            attempts = record.attempts
            if attempts:  # a retry: the previous attempt ends failed
                _end_failed_attempt(attempts[-1], exchange)
            # A query may carry a provider key (``?key=``): the span keeps origin and path.
            attempts.append(
                AttemptRecord(
                    span_id,
                    time_ns(),
                    method,
                    url.partition("?")[0],
                    genai.provider_name(exchange.upstream or "", exchange.kind),
                    genai.operation_name(exchange.path),
                    exchange.model,
                    exchange.attempts - 1 if exchange.attempts > 1 else 0,
                )
            )
        if self._fast_inject:
            _inject_w3c(headers, record, span_id)
        else:
            self._propagator.inject(headers, _context_of(record, span_id), _SETTER)

    def finish(self, exchange: Exchange, handle: object) -> None:
        if type(handle) is not RequestRecord or not handle.sampled or self._queue is None:
            return
        now = time_ns()
        status = exchange.status
        handle.end_ns = now
        handle.status = status
        handle.tenant = exchange.tenant
        handle.upstream = exchange.upstream
        handle.cost_usd = exchange.cost_usd
        if handle.attempts:
            last = handle.attempts[-1]
            last.end_ns = now
            last.response_model = exchange.response_model
            last.response_id = exchange.response_id
            last.input_tokens = exchange.input_tokens
            last.output_tokens = exchange.output_tokens
            if exchange.ttfb is not None and status != STATUS_CLIENT_CLOSED:
                last.status_code = status
            if status >= 500:
                last.outcome = str(status)
        self._queue.add(handle)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True if self._queue is None else self._queue.force_flush(timeout_millis / 1000)

    def shutdown(self, timeout_seconds: float = 2.0) -> None:
        """Export what is queued, bounded: a dead collector cannot hold up the exit."""
        if self._queue is not None:
            self._queue.shutdown(timeout_seconds)
        if self._on_shutdown is not None:
            self._on_shutdown()


def _end_failed_attempt(attempt: AttemptRecord, exchange: Exchange) -> None:
    """End a retried attempt with what went wrong (``status_503``, ``connect_error``...)."""
    outcome = exchange.attempt_log[-1][2] if exchange.attempt_log else "retried"
    if outcome.startswith("status_"):  # an answer: the exchange still holds its status
        attempt.status_code = exchange.status
        outcome = str(exchange.status)
    attempt.outcome = outcome
    attempt.end_ns = time_ns()
