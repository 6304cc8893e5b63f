"""The response of one upstream exchange: its head, then its body with back-pressure.

The connection (``upstream_http11_connection``) feeds it from its parser callbacks;
the core reads it through the ``UpstreamResponse`` port. Reading from the upstream
pauses while more than ``HIGH_WATER`` bytes wait for a slow caller, and resumes below
``LOW_WATER``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Protocol

from proxy.adapters.waiting import wait_resolved
from proxy.core.errors import GatewayTimeout
from proxy.core.ports import Headers

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class ResponseSource(Protocol):
    """What a response asks of the connection it arrives on."""

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def abort(self) -> None: ...
    def finished(self, response: Http11Response) -> None: ...


class Http11Response:
    """The response of one exchange: head, then body chunks with back-pressure."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_connection",
        "_done",
        "_error",
        "_read_timeout",
        "_upstream",
        "_waiter",
        "content_encoding",
        "content_length",
        "content_type",
        "headers",
        "status",
        "verbatim_head",
    )

    def __init__(self, connection: ResponseSource, upstream: str, read_timeout: float) -> None:
        self._connection = connection
        self._upstream = upstream
        self._read_timeout = read_timeout
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: Headers = []
        self.content_length: int | None = None
        self.content_type = ""
        self.content_encoding = ""
        self.verbatim_head = False
        """A header value holds bytes that are not UTF-8 (kept surrogate-escaped)."""

    # Called by the connection (protocol callbacks).
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER:
            self._connection.pause()
        self._wake()

    def feed_eof(self) -> None:
        self._done = True
        self._wake()

    def feed_error(self, error: Exception) -> None:
        if not self._done:
            self._error = error
            self._done = True
        self._wake()

    # Called by the core (the ``UpstreamResponse`` port).
    async def _next(self) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await wait_resolved(self._waiter, self._read_timeout)
            except TimeoutError:
                self._connection.abort()
                raise GatewayTimeout(f"Upstream {self._upstream!r} stalled mid-response.") from None
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < LOW_WATER:
            self._connection.resume()
        return chunk

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self._next():
            yield chunk

    async def read(self) -> bytes:
        parts = []
        while chunk := await self._next():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        self._connection.finished(self)
