"""Finished request records, handed from the event loop to one export thread in batches.

The event loop's share is one ``deque.append`` per traced request (and an ``Event.set``
per batch); turning records into spans and sending them happens on the thread. It
follows the SDK's ``BatchSpanProcessor`` settings (``OTEL_BSP_SCHEDULE_DELAY``,
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, ``OTEL_BSP_MAX_QUEUE_SIZE``), counted in spans there
and here converted to requests of two spans (a server span and one attempt). A record
that finds the queue full is dropped and counted; one warning says so.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence

import structlog

from proxy.adapters.span_records import RequestRecord

_log = structlog.get_logger("llm_sidecar.tracing")


class SpanSink:
    """Where batches go: an encoding and an exporter."""

    def export(self, batch: Sequence[RequestRecord]) -> bool:
        """Send one batch; ``False`` when it could not be delivered."""
        raise NotImplementedError

    def abort(self) -> None:
        """Stop waiting on a collector (cut a retry back-off short); called at exit."""

    def close(self) -> None:
        """Release the exporter."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        value = int(env.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 else default


class BatchSettings:
    """``OTEL_BSP_*`` as request counts and seconds."""

    __slots__ = ("batch", "delay", "max_queue")

    def __init__(self, env: Mapping[str, str]) -> None:
        self.delay = _int(env, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self.batch = max(1, _int(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512) // 2)
        self.max_queue = max(self.batch, _int(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048) // 2)


class SpanExportQueue:
    """Batches records for its sinks on one daemon thread; bounded, never blocking the loop."""

    def __init__(self, sinks: Sequence[SpanSink], settings: BatchSettings) -> None:
        self._sinks = tuple(sinks)
        self._settings = settings
        self._queue: deque[RequestRecord] = deque()
        self._wake = threading.Event()
        self._exporting = threading.Lock()
        self._stopping = False
        self.dropped = 0
        self.exported = 0
        self._dropped_reported = 0
        self._thread = threading.Thread(target=self._run, name="span-export", daemon=True)
        self._thread.start()

    def add(self, record: RequestRecord) -> None:
        """Queue a finished request (event loop thread)."""
        queue = self._queue
        size = len(queue)
        if size >= self._settings.max_queue:
            self.dropped += 1
            return
        queue.append(record)
        if size + 1 == self._settings.batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._settings.delay)
            self._wake.clear()
            self._drain()
        self._drain()

    def _drain(self, timeout: float = -1) -> bool:
        if not self._exporting.acquire(timeout=timeout):
            return False
        try:
            queue = self._queue
            size = self._settings.batch
            while queue:
                batch = [queue.popleft() for _ in range(min(size, len(queue)))]
                for sink in self._sinks:
                    try:
                        sink.export(batch)
                    except Exception:  # a sink bug must not end the thread
                        _log.exception("trace_export_error")
                self.exported += len(batch)
            self._report_drops()
            return True
        finally:
            self._exporting.release()

    def _report_drops(self) -> None:
        dropped = self.dropped
        if dropped != self._dropped_reported:
            if not self._dropped_reported:
                _log.warning(
                    "trace_spans_dropped",
                    detail="the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE); not logged again",
                )
            self._dropped_reported = dropped

    def force_flush(self, timeout_seconds: float = 30.0) -> bool:
        """Export everything queued so far, in the calling thread."""
        return self._drain(timeout_seconds)

    def shutdown(self, timeout_seconds: float = 2.0) -> None:
        """Export what is queued, bounded: a dead collector cannot hold up the exit."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_seconds)
        if self._thread.is_alive():
            for sink in self._sinks:
                sink.abort()
            self._thread.join(timeout_seconds)
        for sink in self._sinks:
            sink.close()
