"""The export queue between the event loop and the export thread, and the propagation paths."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import structlog
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from proxy.adapters.span_export import BatchSettings, SpanExportQueue, SpanSink
from proxy.adapters.span_records import RequestRecord
from proxy.adapters.tracing_otel import _SETTER, _context_of, _inject_w3c, _writes_plain_w3c
from proxy.core.ports import Headers


def _record(n: int) -> RequestRecord:
    return RequestRecord(n + 1, n + 1, 0, "", True, n, "POST", "/v1/chat/completions", f"c{n}")


class _Gate(SpanSink):
    """Holds every batch until opened; remembers what it got and whether it was aborted."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.batches: list[list[int]] = []
        self.aborted = False
        self.closed = False

    def export(self, batch: Sequence[RequestRecord]) -> bool:
        self.open.wait(10)
        self.batches.append([record.trace_id for record in batch])
        return True

    def abort(self) -> None:
        self.aborted = True
        self.open.set()

    def close(self) -> None:
        self.closed = True


def test_bsp_settings_are_read_in_spans_and_kept_as_requests() -> None:
    default = BatchSettings({})
    assert (default.delay, default.batch, default.max_queue) == (5.0, 256, 1024)
    odd = BatchSettings(
        {
            "OTEL_BSP_SCHEDULE_DELAY": "20",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
            "OTEL_BSP_MAX_QUEUE_SIZE": "bogus",
        }
    )
    assert (odd.delay, odd.batch, odd.max_queue) == (0.02, 1, 1024)


def test_a_full_queue_drops_counts_and_warns_once() -> None:
    gate = _Gate()
    settings = BatchSettings(
        {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8", "OTEL_BSP_MAX_QUEUE_SIZE": "16"}
    )
    queue = SpanExportQueue([gate], settings)
    with structlog.testing.capture_logs() as logs:
        # The first batch wakes the thread, which blocks in the gate holding it.
        for n in range(4):
            queue.add(_record(n))
        for _ in range(200):
            if not len(queue._queue):
                break
            time.sleep(0.005)
        for n in range(4, 30):  # 8 more fit; the other 18 are dropped
            queue.add(_record(n))
        assert queue.dropped == 18
        gate.open.set()
        assert queue.force_flush(5)
    exported = sorted(trace_id for batch in gate.batches for trace_id in batch)
    assert exported == list(range(1, 13))
    assert queue.exported == 12
    assert [entry["event"] for entry in logs] == ["trace_spans_dropped"]
    queue.shutdown(1)
    assert gate.closed


def test_force_flush_exports_everything_queued_in_order() -> None:
    gate = _Gate()
    gate.open.set()
    queue = SpanExportQueue([gate], BatchSettings({"OTEL_BSP_SCHEDULE_DELAY": "60000"}))
    for n in range(300):
        queue.add(_record(n))
    assert queue.force_flush(5)
    assert [trace_id for batch in gate.batches for trace_id in batch] == list(range(1, 301))
    assert max(len(batch) for batch in gate.batches) == 256
    queue.shutdown(1)


def test_a_stuck_exporter_cannot_hold_up_the_exit() -> None:
    gate = _Gate()
    queue = SpanExportQueue([gate], BatchSettings({"OTEL_BSP_SCHEDULE_DELAY": "10"}))
    queue.add(_record(1))
    time.sleep(0.05)  # the thread is now waiting in the gate
    started = time.monotonic()
    queue.shutdown(0.2)
    assert gate.aborted
    assert time.monotonic() - started < 1.0


def test_default_propagators_take_the_direct_w3c_path() -> None:
    """``tracecontext,baggage`` writes exactly what ``_inject_w3c`` writes, so it is skipped."""
    default = CompositePropagator([TraceContextTextMapPropagator()])
    assert _writes_plain_w3c(default)
    record = RequestRecord(0xABC, 0x1, 0x2, "vendor=abc", False, 0, "POST", "/", "c")
    ours: Headers = []
    _inject_w3c(ours, record, 0x77)
    theirs: Headers = []
    default.inject(theirs, _context_of(record, 0x77), _SETTER)
    assert (
        ours
        == theirs
        == [
            ("traceparent", "00-00000000000000000000000000000abc-0000000000000077-00"),
            ("tracestate", "vendor=abc"),
        ]
    )


def test_a_propagator_that_writes_otherwise_keeps_its_own_path() -> None:
    class Upper(TraceContextTextMapPropagator):
        def inject(self, carrier, context=None, setter=_SETTER) -> None:  # type: ignore[no-untyped-def, override]
            written: Headers = []
            super().inject(written, context, setter)
            carrier.extend((key.upper(), value) for key, value in written)

    assert not _writes_plain_w3c(Upper())
