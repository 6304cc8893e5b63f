"""Request records -> an OTLP ``ExportTraceServiceRequest``, written as protobuf bytes.

The SDK's encoder builds a ``ReadableSpan`` per span and then a protobuf object per
span, attribute and value: ~45 µs of CPU per traced request, on the one core the event
loop also needs. The message is small and fixed in shape, so it is written here
directly (field tags from opentelemetry-proto's ``trace.proto``), with the encoding of
repeated attribute pairs (method, model, provider...) cached. The bytes decode to the
same message the SDK's encoder makes from the same spans; ``tests/unit/test_otlp_protobuf.py``
holds the two side by side.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from struct import Struct

from proxy.adapters.span_records import (
    CLIENT,
    SERVER,
    AttributeValue,
    RequestRecord,
    attempt_attributes,
    attempt_name,
)

_FIXED64 = Struct("<Q")
_DOUBLE = Struct("<d")
_FLAGS_LOCAL = b"\x85\x01" + (0x100).to_bytes(4, "little")  # span.flags: parent not remote
_FLAGS_REMOTE = b"\x85\x01" + (0x300).to_bytes(4, "little")  # ...: the caller's parent
_STATUS_UNSET = b"\x7a\x00"
_STATUS_ERROR = b"\x7a\x02\x18\x02"
# Attributes whose values repeat across requests; the others (ids) are encoded each time.
_UNIQUE = frozenset({"llm_sidecar.correlation_id", "gen_ai.response.id"})
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
        # Encoded attribute pairs, and span names (keyed by the bare string).
        self._cache: dict[tuple[str, AttributeValue] | str, bytes] = {}

    def encode(self, requests: Sequence[RequestRecord]) -> bytes:
        spans = b"".join(self._spans(request) for request in requests)
        scope_spans = _field(0x12, self._scope + spans)
        return _field(0x0A, self._resource + scope_spans)

    def _spans(self, request: RequestRecord) -> bytes:
        trace_id = b"\x0a\x10" + request.trace_id.to_bytes(16, "big")
        trace_state = _field(0x1A, request.trace_state.encode()) if request.trace_state else b""
        server_id = request.span_id.to_bytes(8, "big")
        parent = request.parent_span_id
        out = [
            self._span(
                trace_id + b"\x12\x08" + server_id + trace_state,
                (b"\x22\x08" + parent.to_bytes(8, "big")) if parent else b"",
                request.name,
                SERVER,
                request.start_ns,
                request.end_ns,
                request.attributes(),
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
                    attempt_attributes(request, attempt),
                    attempt.outcome is not None,
                    _FLAGS_LOCAL,
                )
            )
        return b"".join(out)

    def _span(
        self,
        ids: bytes,
        parent: bytes,
        name: str,
        kind: int,
        start_ns: int,
        end_ns: int,
        attributes: Sequence[tuple[str, AttributeValue]],
        error: bool,
        flags: bytes,
    ) -> bytes:
        cache = self._cache
        encoded = []
        for pair in attributes:
            if pair[0] in _UNIQUE:
                encoded.append(_key_value(*pair))
                continue
            found = cache.get(pair)
            if found is None:
                if len(cache) >= _CACHE_LIMIT:  # models and paths come from callers
                    cache.clear()
                found = cache[pair] = _key_value(*pair)
            encoded.append(found)
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
                *encoded,
                _STATUS_ERROR if error else _STATUS_UNSET,
                flags,
            )
        )
        return _field(0x12, body)
