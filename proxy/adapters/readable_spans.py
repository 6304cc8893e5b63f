"""Request records -> the SDK's ``ReadableSpan``s, for exporters other than OTLP/HTTP.

The console and OTLP/gRPC exporters (and any ``SpanExporter`` handed to
``tracing_from_env``) take finished SDK spans; they are built here, in the export
thread, from the same records and attribute functions the protobuf writer uses.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from proxy.adapters.span_records import RequestRecord, attempt_attributes, attempt_name

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_ERROR = Status(StatusCode.ERROR)
_UNSET = Status(StatusCode.UNSET)


class ReadableSpanBuilder:
    """Builds the spans of recorded requests under one resource and scope."""

    __slots__ = ("_resource", "_scope")

    def __init__(self, resource: Resource, scope_name: str = "llm_sidecar") -> None:
        self._resource = resource
        self._scope = InstrumentationScope(scope_name)

    def build(self, requests: Sequence[RequestRecord]) -> list[ReadableSpan]:
        spans: list[ReadableSpan] = []
        for request in requests:
            state = TraceState.from_header([request.trace_state]) if request.trace_state else None
            trace_id = request.trace_id
            server = SpanContext(trace_id, request.span_id, False, _SAMPLED, state)
            caller = None
            if request.parent_span_id:
                caller = SpanContext(trace_id, request.parent_span_id, True, _SAMPLED, state)
            spans.append(
                self._span(
                    request.name,
                    server,
                    caller,
                    SpanKind.SERVER,
                    request.start_ns,
                    request.end_ns,
                    dict(request.attributes()),
                    request.failed,
                )
            )
            for attempt in request.attempts:
                spans.append(
                    self._span(
                        attempt_name(attempt),
                        SpanContext(trace_id, attempt.span_id, False, _SAMPLED, state),
                        server,
                        SpanKind.CLIENT,
                        attempt.start_ns,
                        attempt.end_ns,
                        dict(attempt_attributes(request, attempt)),
                        attempt.outcome is not None,
                    )
                )
        return spans

    def _span(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        start_ns: int,
        end_ns: int,
        attributes: dict[str, str | int | float | bool],
        error: bool,
    ) -> ReadableSpan:
        return ReadableSpan(
            name,
            context,
            parent,
            self._resource,
            attributes,
            kind=kind,
            status=_ERROR if error else _UNSET,
            start_time=start_ns,
            end_time=end_ns,
            instrumentation_scope=self._scope,
        )
