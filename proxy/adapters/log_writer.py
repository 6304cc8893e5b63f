"""Where log lines go: batched on the event loop, written to stdout by a thread.

Like nginx's ``access_log ... buffer=64k flush=...``: on the event loop a line costs a
list append; the batch is handed to a writer thread every ``flush_seconds`` (or at
``max_batch_bytes``), which writes it with one ``os.write`` outside the GIL. A slow or
blocked stdout (a full pipe, a stalled log shipper) therefore never stalls requests,
and handing over batches rather than lines keeps the two threads from fighting over
the GIL once per request. Lines logged off the loop (the CLI, startup) are handed over
at once.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import queue
import threading
from typing import TextIO

FLUSH_SECONDS = 0.05
MAX_BATCH_BYTES = 64 * 1024
_running_loop = asyncio.events._get_running_loop  # no exception when there is none


class BatchedLineWriter:
    """A structlog "logger" taking rendered lines (``str`` or ``bytes``)."""

    __slots__ = ("_batch", "_batch_bytes", "_flush_handle", "_queue", "_stream", "_thread")

    def __init__(self, stream: TextIO | None = None) -> None:
        """Write to file descriptor 1 (stdout), or to ``stream`` (tests)."""
        self._stream = stream
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_batches, name="log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def msg(self, line: str | bytes) -> None:
        data = line.encode() if isinstance(line, str) else line
        loop = _running_loop()
        if loop is None:
            self._queue.put(data + b"\n")
            return
        self._batch.append(data)
        self._batch_bytes += len(data)
        if self._batch_bytes >= MAX_BATCH_BYTES:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(FLUSH_SECONDS, self.flush)

    log = debug = info = warning = warn = error = critical = exception = msg

    def flush(self) -> None:
        """Hand the current batch to the writer thread."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._batch:
            self._batch.append(b"")
            self._queue.put(b"\n".join(self._batch))
            self._batch = []
            self._batch_bytes = 0

    def close(self) -> None:
        """Flush and stop the writer (at exit, or in tests)."""
        self.flush()
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=2)

    def _write_batches(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._stream is not None:
                self._stream.write(data.decode())
                self._stream.flush()
                continue
            view = memoryview(data)
            while view:
                try:
                    written = os.write(1, view)
                except InterruptedError:
                    continue
                except OSError:
                    break  # stdout is gone: drop the batch rather than the process
                view = view[written:]
