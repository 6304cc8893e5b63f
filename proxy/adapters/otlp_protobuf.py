"""Request records -> an OTLP ``ExportTraceServiceRequest``, written as protobuf bytes.

The SDK's path (a ``ReadableSpan`` per span, then a protobuf object per span, attribute
and value) costs ~80 µs of CPU per traced request, on the core the event loop also
needs. The message is small and fixed in shape, so it is written here directly (field
tags from opentelemetry-proto's ``trace.proto``), and each run of attributes whose
values repeat across requests (method, URL, model, tenant...) is encoded once: 7.4 µs
per request. The bytes decode to the message the SDK's encoder makes from the same
spans; ``tests/unit/test_otlp_protobuf.py`` holds the two side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from struct import Struct

from proxy.adapters import genai_attributes as genai
from proxy.adapters.span_records import (
    CLIENT,
    SERVER,
    AttemptRecord,
    Attributes,
    RequestRecord,
    attempt_name,
    server_attributes,
)

_FIXED64 = Struct("<Q")
_DOUBLE = Struct("<d")
_FLAGS_LOCAL = b"\x85\x01" + (0x100).to_bytes(4, "little")  # span.flags: parent not remote
_FLAGS_REMOTE = b"\x85\x01" + (0x300).to_bytes(4, "little")  # ...: the caller's parent
_STATUS_UNSET = b"\x7a\x00"
_STATUS_ERROR = b"\x7a\x02\x18\x02"
_CACHE_LIMIT = 4096


_ONE_BYTE = tuple(bytes((n,)) for n in range(0x80))  # varints below 128: most lengths


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (``tag`` already holds wire type 2)."""
    size = len(payload)
    return _ONE_BYTE[tag] + (_ONE_BYTE[size] if size < 0x80 else _varint(size)) + payload


def _any_value(value: object) -> bytes:
    """An ``AnyValue``, as the SDK encodes each Python type (resources may hold any)."""
    if isinstance(value, bool):  # before int: a bool is an int
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(0x0A, value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64, two's complement
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _field(0x3A, value)
    if isinstance(value, Mapping):
        pairs = b"".join(_field(0x0A, _pair(str(k), v)) for k, v in value.items())
        return _field(0x32, pairs)
    if isinstance(value, Sequence):
        return _field(0x2A, b"".join(_field(0x0A, _any_value(item)) for item in value))
    return b""  # None: an empty AnyValue


def _pair(key: str, value: object) -> bytes:
    """A ``KeyValue`` message body."""
    return _field(0x0A, key.encode()) + _field(0x12, _any_value(value))


def _key_value(key: str, value: object) -> bytes:
    """A span attribute: ``Span.attributes`` is field 9."""
    return _field(0x4A, _pair(key, value))


class OtlpEncoder:
    """Encodes batches of request records for one resource and instrumentation scope."""

    __slots__ = ("_cache", "_resource", "_scope")

    def __init__(
        self, resource: Iterable[tuple[str, object]], scope_name: str = "llm_sidecar"
    ) -> None:
        self._resource = _field(0x0A, b"".join(_field(0x0A, _pair(k, v)) for k, v in resource))
        self._scope = _field(0x0A, _field(0x0A, scope_name.encode()))
        # Encoded attribute runs (keyed by their values) and span names (the bare string).
        self._cache: dict[tuple[object, ...] | str, bytes] = {}

    def encode(self, requests: Sequence[RequestRecord]) -> bytes:
        spans = b"".join(self._spans(request) for request in requests)
        scope_spans = _field(0x12, self._scope + spans)
        return _field(0x0A, self._resource + scope_spans)

    def _spans(self, request: RequestRecord) -> bytes:
        trace_id = b"\x0a\x10" + request.trace_id.to_bytes(16, "big")
        trace_state = _field(0x1A, request.trace_state.encode()) if request.trace_state else b""
        server_id = request.span_id.to_bytes(8, "big")
        parent = request.parent_span_id
        correlation = _key_value(genai.CORRELATION_ID, request.correlation_id)
        out = [
            self._span(
                trace_id + b"\x12\x08" + server_id + trace_state,
                (b"\x22\x08" + parent.to_bytes(8, "big")) if parent else b"",
                request.name,
                SERVER,
                request.start_ns,
                request.end_ns,
                self._server_attributes(request, correlation),
                request.failed,
                _FLAGS_REMOTE if parent else _FLAGS_LOCAL,
            )
        ]
        under_server = b"\x22\x08" + server_id
        for attempt in request.attempts:
            out.append(
                self._span(
                    trace_id + b"\x12\x08" + attempt.span_id.to_bytes(8, "big") + trace_state,
                    under_server,
                    attempt_name(attempt),
                    CLIENT,
                    attempt.start_ns,
                    attempt.end_ns,
                    self._attempt_attributes(request, attempt, correlation),
                    attempt.outcome is not None,
                    _FLAGS_LOCAL,
                )
            )
        return b"".join(out)

    # ``span_records``' attribute lists, written in runs: a run of values that repeat
    # across requests is encoded once per distinct run, the ids every time. The order is
    # ``span_records``' own; ``tests/unit/test_otlp_protobuf.py`` holds the two together.
    def _run(self, key: tuple[object, ...], pairs: Callable[[], Attributes]) -> bytes:
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= _CACHE_LIMIT:  # models and paths come from callers
                self._cache.clear()
            found = self._cache[key] = b"".join(_key_value(k, v) for k, v in pairs())
        return found

    def _server_attributes(self, request: RequestRecord, correlation: bytes) -> bytes:
        method, path, status = request.method, request.path, request.status
        tenant, upstream = request.tenant, request.upstream

        def head() -> Attributes:
            return [("http.request.method", method), ("url.path", path)]

        def tail() -> Attributes:
            pairs: Attributes = [("http.response.status_code", status)]
            if tenant is not None:
                pairs.append((genai.TENANT, tenant))
            if upstream is not None:
                pairs.append((genai.UPSTREAM, upstream))
            return pairs

        out = (
            self._run((SERVER, method, path), head)
            + correlation
            + self._run((SERVER, status, tenant, upstream), tail)
        )
        if request.cost_usd is not None:
            out += _key_value("llm_sidecar.cost_usd", request.cost_usd)
        if request.failed:
            out += self._run((SERVER, status), lambda: [("error.type", str(status))])
        return out

    def _attempt_attributes(
        self, request: RequestRecord, attempt: AttemptRecord, correlation: bytes
    ) -> bytes:
        a, tenant = attempt, request.tenant

        def head() -> Attributes:
            return [
                ("http.request.method", a.method),
                ("url.full", a.url),
                (genai.PROVIDER_NAME, a.provider),
            ]

        def middle() -> Attributes:
            pairs: Attributes = list(server_attributes(a.url))
            if a.resend_count:
                pairs.append(("http.request.resend_count", a.resend_count))
            for key, value in (
                (genai.TENANT, tenant),
                (genai.OPERATION_NAME, a.operation),
                (genai.REQUEST_MODEL, a.model),
                (genai.RESPONSE_MODEL, a.response_model),
            ):
                if value is not None:
                    pairs.append((key, value))
            return pairs

        def tail() -> Attributes:
            pairs: Attributes = []
            for key, value in (
                (genai.INPUT_TOKENS, a.input_tokens),
                (genai.OUTPUT_TOKENS, a.output_tokens),
                ("http.response.status_code", a.status_code),
                ("error.type", a.outcome),
            ):
                if value is not None:
                    pairs.append((key, value))
            return pairs

        out = self._run((CLIENT, a.method, a.url, a.provider), head) + correlation
        out += self._run(
            (CLIENT, a.url, a.resend_count, tenant, a.operation, a.model, a.response_model), middle
        )
        if a.response_id is not None:
            out += _key_value(genai.RESPONSE_ID, a.response_id)
        return out + self._run(
            (CLIENT, a.input_tokens, a.output_tokens, a.status_code, a.outcome), tail
        )

    def _span(
        self,
        ids: bytes,
        parent: bytes,
        name: str,
        kind: int,
        start_ns: int,
        end_ns: int,
        attributes: bytes,
        error: bool,
        flags: bytes,
    ) -> bytes:
        cache = self._cache
        named = cache.get(name)
        if named is None:
            named = cache[name] = _field(0x2A, name.encode())
        body = b"".join(
            (
                ids,
                parent,
                named,
                bytes((0x30, kind)),
                b"\x39",
                _FIXED64.pack(start_ns),
                b"\x41",
                _FIXED64.pack(end_ns),
                attributes,
                _STATUS_ERROR if error else _STATUS_UNSET,
                flags,
            )
        )
        return _field(0x12, body)
