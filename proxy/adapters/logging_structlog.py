"""structlog configuration: one JSON object per line on stdout, written off the event loop.

Lines are rendered on the loop (orjson, a few microseconds) and handed to a writer
thread through a queue, so a slow or blocked stdout (a full pipe, a stalled log
shipper) never stalls request handling.
"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from proxy.core.exchange import Exchange

_LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Last line of defence: whatever a careless call site passes, these never get out.
_SECRET_FIELDS = frozenset({"authorization", "api_key", "apikey", "key", "password", "token"})
_SECRET_PREFIXES = ("sk-", "gsk_", "llmsc-", "Bearer ", "bearer ", "Basic ")
_SECRET_INFIXES = ("Bearer ", "bearer ", "llmsc-")
REDACTED = "[redacted]"


def redact_secrets(_logger: object, _method: str, event: MutableMapping[str, Any]) -> Any:
    """Drop values under secret-sounding keys or that look like keys/Authorization values."""
    for name, value in event.items():
        if name.lower() in _SECRET_FIELDS or (
            isinstance(value, str)
            and (value.startswith(_SECRET_PREFIXES) or any(i in value for i in _SECRET_INFIXES))
        ):
            event[name] = REDACTED
    return event


class QueuedLineWriter:
    """A structlog logger whose lines are written to a stream by a daemon thread."""

    __slots__ = ("_queue", "_stream", "_thread")

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def msg(self, line: str | bytes) -> None:
        self._queue.put(line.encode() if isinstance(line, str) else line)

    log = debug = info = warning = warn = error = critical = exception = msg

    def _drain(self) -> None:
        out = self._stream.buffer if hasattr(self._stream, "buffer") else None
        while True:
            line = self._queue.get()
            batch = [line]
            while not self._queue.empty() and len(batch) < 512:
                batch.append(self._queue.get())
            stop = None in batch
            data = b"".join(item + b"\n" for item in batch if item is not None)
            if out is not None:
                out.write(data)
                out.flush()
            else:
                self._stream.write(data.decode())
                self._stream.flush()
            if stop:
                return

    def close(self) -> None:
        """Flush what is queued (at exit, or in tests)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=2)


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Configure structlog once, in the process entrypoint (never at import)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    if fmt == "console":
        renderer: Any = structlog.dev.ConsoleRenderer(colors=False)
        writer_factory: Any = structlog.PrintLoggerFactory(stream or sys.stdout)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        writer = QueuedLineWriter(stream)

        def writer_factory(*_args: Any) -> QueuedLineWriter:
            return writer

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=writer_factory,
        cache_logger_on_first_use=True,
    )


class StructlogAccessLog:
    """Writes the one access line per request (``event: "request"``)."""

    __slots__ = ("_clock", "_logger")

    def __init__(self, clock: Any) -> None:
        self._logger = structlog.get_logger("llm_sidecar.access")
        self._clock = clock

    def upstream_started(self, exchange: Exchange) -> None:
        return None

    def first_byte(self, exchange: Exchange) -> None:
        return None

    def request_finished(self, exchange: Exchange) -> None:
        ttfb = exchange.ttfb
        self._logger.info(
            "request",
            correlation_id=exchange.correlation_id,
            trace_id=exchange.trace_id,
            span_id=exchange.span_id,
            tenant=exchange.tenant,
            user=exchange.user,
            upstream=exchange.upstream,
            method=exchange.method,
            path=exchange.path,
            status=exchange.status,
            duration_ms=round((self._clock() - exchange.started) * 1000, 3),
            ttfb_ms=round(ttfb * 1000, 3) if ttfb is not None else None,
            model=exchange.model,
            stream=exchange.stream,
            input_tokens=exchange.input_tokens,
            output_tokens=exchange.output_tokens,
        )
