"""One keep-alive HTTP/1.1 connection to an upstream, and the response it carries.

The protocol writes a request as one buffer and parses the reply with ``httptools``
(llhttp); the body reaches the core chunk by chunk, with back-pressure: reading from
the upstream pauses while more than ``HIGH_WATER`` bytes wait for a slow caller. The
pool that owns the connection (``upstream_http11``) decides about reuse.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Protocol, cast

import httptools

from proxy.core.errors import BadGateway, GatewayTimeout
from proxy.core.ports import Headers

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class ConnectionOwner(Protocol):
    """What a connection tells its pool."""

    name: str

    def release(self, connection: Http11Connection | None) -> None: ...
    def forget(self, connection: Http11Connection) -> None: ...


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
    )

    def __init__(self, connection: Http11Connection, upstream: str, read_timeout: float) -> None:
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
                async with asyncio.timeout(self._read_timeout):
                    await self._waiter
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


class Http11Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    def __init__(self, pool: ConnectionOwner) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response: Http11Response | None = None
        self._head: asyncio.Future[None] | None = None
        self._complete = False
        self._keep_alive = False
        self._paused = False
        self.closed = False
        self.idle_since = 0.0
        self.exchanges = 0
        self.received = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self._response is None:  # bytes nobody asked for: the connection is unusable
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadGateway(f"Upstream {self._pool.name!r} tried to switch protocols."))
        except httptools.HttpParserError:
            self._fail(BadGateway(f"Upstream {self._pool.name!r} sent a malformed response."))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self._response is not None and not self._complete:
            self._fail(
                BadGateway(
                    f"Upstream {self._pool.name!r} closed the connection.", code="upstream_reset"
                )
            )

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        response = self._response
        assert response is not None
        key = name.decode("latin-1")
        text = value.decode("utf-8", "surrogateescape")
        response.headers.append((key, text))
        lowered = key.lower()
        if lowered == "content-length":
            response.content_length = int(text) if text.isdigit() else None
        elif lowered == "content-type":
            response.content_type = text
        elif lowered == "content-encoding":
            response.content_encoding = text

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # informational (103 Early Hints): wait for the real head
            response.headers = []
            return
        response.status = status
        # Read now: llhttp answers for the message being parsed, not after it is done.
        self._keep_alive = self._parser.should_keep_alive()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._response is not None and self._response.status:
            self._response.feed(body)

    def on_message_complete(self) -> None:
        response = self._response
        if response is None or not response.status:
            return  # the end of an informational response
        self._complete = True
        response.feed_eof()

    # Used by the pool and the response.
    async def exchange(
        self, request: bytes, upstream: str, read_timeout: float, *, head_only: bool
    ) -> Http11Response:
        assert self._transport is not None
        response = self._response = Http11Response(self, upstream, read_timeout)
        self.exchanges += 1
        self.received = False
        self._complete = False
        self._head = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        try:
            async with asyncio.timeout(read_timeout):
                await self._head
        except TimeoutError:
            self.abort()
            raise GatewayTimeout(f"Upstream {upstream!r} did not answer in time.") from None
        if head_only:  # HEAD: no body follows whatever the head says
            self._complete = True
            self.closed = True  # llhttp would expect a body; never reuse this one
            response.feed_eof()
        return response

    def _fail(self, error: Exception) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        elif self._response is not None:
            self._response.feed_error(error)
        self.abort()

    def finished(self, response: Http11Response) -> None:
        if response is not self._response:
            return
        self._response = None
        self._head = None
        if self._complete and not self.closed and self._keep_alive:
            self.resume()
            self._pool.release(self)
        else:
            self.abort()
            self._pool.release(None)

    def pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()
