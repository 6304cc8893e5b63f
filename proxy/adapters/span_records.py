"""What a traced request leaves behind: plain records, turned into spans off the hot path.

The request path only fills these slots (ids, clocks, the few values a span shows); the
span attributes, names and statuses are derived here, by the export thread, once per
batch. The SDK's ``ReadableSpan``s take the attribute lists below as they are; the
OTLP protobuf writer follows the same order run by run, and a differential test holds
the two encodings equal (ADR 0053).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from proxy.adapters import genai_attributes as genai

AttributeValue = str | int | float | bool
Attributes = list[tuple[str, AttributeValue]]

SERVER = 2  # OTLP SpanKind values
CLIENT = 3


class AttemptRecord:
    """One upstream attempt: the GenAI CLIENT span, child of the request's span."""

    __slots__ = (
        "end_ns",
        "input_tokens",
        "method",
        "model",
        "operation",
        "outcome",
        "output_tokens",
        "provider",
        "resend_count",
        "response_id",
        "response_model",
        "span_id",
        "start_ns",
        "status_code",
        "url",
    )

    def __init__(
        self,
        span_id: int,
        start_ns: int,
        method: str,
        url: str,
        provider: str,
        operation: str | None,
        model: str | None,
        resend_count: int,
    ) -> None:
        self.span_id = span_id
        self.start_ns = start_ns
        self.end_ns = start_ns
        self.method = method
        self.url = url
        self.provider = provider
        self.operation = operation
        self.model = model
        self.resend_count = resend_count
        self.response_model: str | None = None
        self.response_id: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.status_code: int | None = None
        """The upstream's (or the relay's) status, when one reached the caller's side."""
        self.outcome: str | None = None
        """``error.type``: why this attempt failed, ``None`` when it did not."""


class RequestRecord:
    """One request's trace: its SERVER span and the attempts under it.

    Made by ``start``, filled as the request goes, queued for export by ``finish``.
    ``parent_span_id`` is 0 for a new trace; a caller's parent is always remote.
    """

    __slots__ = (
        "attempts",
        "correlation_id",
        "cost_usd",
        "end_ns",
        "method",
        "parent_span_id",
        "path",
        "sampled",
        "span_id",
        "start_ns",
        "status",
        "tenant",
        "trace_id",
        "trace_state",
        "upstream",
    )

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        parent_span_id: int,
        trace_state: str,
        sampled: bool,
        start_ns: int,
        method: str,
        path: str,
        correlation_id: str,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.trace_state = trace_state
        self.sampled = sampled
        self.start_ns = start_ns
        self.end_ns = start_ns
        self.method = method
        self.path = path
        self.correlation_id = correlation_id
        self.attempts: list[AttemptRecord] = []
        self.status = 0
        self.tenant: str | None = None
        self.upstream: str | None = None
        self.cost_usd: float | None = None

    @property
    def name(self) -> str:
        return self.method if self.method != "_OTHER" else "HTTP"

    @property
    def failed(self) -> bool:
        return self.status >= 500

    def attributes(self) -> Attributes:
        """The SERVER span's attributes, in the order the SDK span used to collect them."""
        attrs: Attributes = [
            ("http.request.method", self.method),
            ("url.path", self.path),
            (genai.CORRELATION_ID, self.correlation_id),
            ("http.response.status_code", self.status),
        ]
        if self.tenant is not None:
            attrs.append((genai.TENANT, self.tenant))
        if self.upstream is not None:
            attrs.append((genai.UPSTREAM, self.upstream))
        if self.cost_usd is not None:
            attrs.append(("llm_sidecar.cost_usd", self.cost_usd))
        if self.failed:
            attrs.append(("error.type", str(self.status)))
        return attrs


def attempt_name(attempt: AttemptRecord) -> str:
    if attempt.operation is None:
        return attempt.method
    return genai.span_name(attempt.operation, attempt.model)


def attempt_attributes(request: RequestRecord, attempt: AttemptRecord) -> Attributes:
    """A CLIENT span's attributes: the call, then what came back, then how it failed."""
    attrs: Attributes = [
        ("http.request.method", attempt.method),
        ("url.full", attempt.url),
        (genai.PROVIDER_NAME, attempt.provider),
        (genai.CORRELATION_ID, request.correlation_id),
    ]
    attrs.extend(server_attributes(attempt.url))
    if attempt.resend_count:
        attrs.append(("http.request.resend_count", attempt.resend_count))
    if request.tenant is not None:
        attrs.append((genai.TENANT, request.tenant))
    if attempt.operation is not None:
        attrs.append((genai.OPERATION_NAME, attempt.operation))
    if attempt.model is not None:
        attrs.append((genai.REQUEST_MODEL, attempt.model))
    if attempt.response_model is not None:
        attrs.append((genai.RESPONSE_MODEL, attempt.response_model))
    if attempt.response_id is not None:
        attrs.append((genai.RESPONSE_ID, attempt.response_id))
    if attempt.input_tokens is not None:
        attrs.append((genai.INPUT_TOKENS, attempt.input_tokens))
    if attempt.output_tokens is not None:
        attrs.append((genai.OUTPUT_TOKENS, attempt.output_tokens))
    if attempt.status_code is not None:
        attrs.append(("http.response.status_code", attempt.status_code))
    if attempt.outcome is not None:
        attrs.append(("error.type", attempt.outcome))
    return attrs


_servers: dict[str, Sequence[tuple[str, AttributeValue]]] = {}


def server_attributes(url: str) -> Sequence[tuple[str, AttributeValue]]:
    """``server.address`` and ``server.port`` of an upstream URL, parsed once per origin."""
    origin = url[: url.find("/", url.find("//") + 2)] if url.count("/") >= 3 else url
    found = _servers.get(origin)
    if found is None:
        parts = urlsplit(origin)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = (("server.address", parts.hostname or ""), ("server.port", port))
        if len(_servers) < 256:  # origins come from settings: a handful
            _servers[origin] = found
    return found
