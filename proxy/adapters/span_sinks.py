"""The two ways a batch of request records leaves: OTLP/HTTP bytes, or SDK spans.

``OtlpHttpSink`` writes the protobuf itself and posts it through the SDK exporter's own
HTTP client, so endpoint, headers, TLS files, compression, timeout and retries keep
following the standard ``OTEL_EXPORTER_OTLP_*`` variables. ``SdkSink`` builds
``ReadableSpan``s for any other ``SpanExporter`` (console, OTLP/gRPC, a test's).
Either way a collector that is down gives one warning, then silence until it answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import structlog

from proxy.adapters.otlp_protobuf import OtlpEncoder
from proxy.adapters.span_export import SpanSink
from proxy.adapters.span_records import RequestRecord

if TYPE_CHECKING:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExporter

    from proxy.adapters.readable_spans import ReadableSpanBuilder

_log = structlog.get_logger("llm_sidecar.tracing")


class ExportHealth:
    """One warning when export starts failing, one line when it recovers, silence between."""

    __slots__ = ("_failing", "_target", "failed_batches")

    def __init__(self, target: str) -> None:
        self._target = target
        self._failing = False
        self.failed_batches = 0

    def outcome(self, delivered: bool) -> bool:
        if delivered:
            if self._failing:
                self._failing = False
                _log.info("trace_export_recovered", target=self._target)
            return True
        self.failed_batches += 1
        if not self._failing:
            self._failing = True
            _log.warning(
                "trace_export_failing",
                target=self._target,
                detail="spans are dropped until the collector answers; not logged again",
            )
        return False


class _HttpClient(Protocol):
    def export(self, data: bytes) -> object: ...


class OtlpHttpSink(SpanSink):
    """Protobuf written by ``OtlpEncoder``, posted by the SDK's OTLP/HTTP client.

    The exporter is built on first use, on the export thread: its imports (requests,
    the protobuf runtime) stay off the sidecar's start.
    """

    def __init__(
        self, encoder: OtlpEncoder, make_exporter: Callable[[], OTLPSpanExporter], target: str
    ) -> None:
        self._encoder = encoder
        self._make_exporter = make_exporter
        self._exporter: OTLPSpanExporter | None = None
        self._closed = False
        self.health = ExportHealth(target)

    def export(self, batch: Sequence[RequestRecord]) -> bool:
        if self._closed:
            return False
        data = self._encoder.encode(batch)
        try:
            exporter = self._exporter
            if exporter is None:
                exporter = self._exporter = self._make_exporter()
            client: _HttpClient = exporter._client  # private, pinned: the exporter's HTTP sender
            delivered = bool(getattr(client.export(data), "success", False))
        except Exception:  # an exporter bug must not end the export thread
            delivered = False
        return self.health.outcome(delivered)

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._exporter is not None:
                # Also cuts a retry back-off short.
                self._exporter.shutdown()  # type: ignore[no-untyped-call]


class SdkSink(SpanSink):
    """``ReadableSpan``s for a ``SpanExporter``; ``quiet`` adds the one-warning rule."""

    def __init__(
        self, builder: ReadableSpanBuilder, exporter: SpanExporter, target: str | None = None
    ) -> None:
        self._builder = builder
        self._exporter = exporter
        self._closed = False
        self.health = ExportHealth(target) if target is not None else None

    def export(self, batch: Sequence[RequestRecord]) -> bool:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            result = self._exporter.export(self._builder.build(batch))
        except Exception:  # an exporter bug must not end the export thread
            result = SpanExportResult.FAILURE
        delivered = result is SpanExportResult.SUCCESS
        return self.health.outcome(delivered) if self.health is not None else delivered

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._exporter.shutdown()
