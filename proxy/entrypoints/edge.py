"""The traffic listener's HTTP server: aiohttp's low-level server, the proxy its one handler.

Why not an ``Application`` with a router: the listener has exactly one route, so the
router, the middleware chain and the match info would run on every request for nothing
(their cost was within the benchmark's noise), and a catch-all pattern still misses
targets aiohttp's router cannot match (a decoded newline in the path).

Why a handler subclass: what aiohttp's parser rejects (header floods, smuggling-shaped
framing, raw CR/NUL) it answers with a plain-text 400 quoting the offending bytes, which
may hold the caller's key, and logs a traceback of them.
:meth:`EdgeRequestHandler.handle_error` answers in OpenAI's shape with a fixed message
and leaves one access line instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo  # pinned in requirements.lock

from proxy.settings import Settings

ProxyHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
Rejection = Callable[[int, BaseException | None], web.StreamResponse]

MAX_REQUEST_HEADERS = 128
"""Request header count and size caps: past them the parser rejects the request (400)."""
MAX_HEADER_FIELD_BYTES = 8190
MAX_REQUEST_LINE_BYTES = 8190


class EdgeRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol, with the sidecar's answer to unparseable input."""

    def __init__(self, manager: EdgeServer, *, reject: Rejection, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._reject = reject

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) <= queued:
            return
        message, _ = self._messages[-1]
        # The common case (a parsed request head) stops at the isinstance: no body lookup.
        if isinstance(message, _ErrInfo) and (body := self._open_body()) is not None:
            # The parser broke inside a body whose head already went through (a bad chunk
            # size arriving late). aiohttp queues that as a new message and leaves the body
            # waiting: fail the body now (400 ``malformed_body`` from the handler, not a
            # 408 after the body timeout) and close once that answer is out.
            self._messages.pop()
            error = message.exc
            if not isinstance(error, HttpProcessingError):
                error = BadHttpMessage("malformed body")
            body.set_exception(error)
            # A reader woken by this same read (a chunk end, no data) re-arms its wait
            # without looking at the exception: tell it again once it has.
            asyncio.get_running_loop().call_soon(body.set_exception, error)
            self.close()

    def _open_body(self) -> StreamReader | None:
        """The body still being received: the current request's, or a queued one's."""
        request = self._current_request
        if request is not None and not request.content.is_eof():
            return request.content
        for message, payload in reversed(self._messages):
            if not isinstance(message, _ErrInfo) and not payload.is_eof():
                return payload
        return None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # The answer comes on a closed connection: the stream cannot be trusted past it.
        return self._reject(status, exc)


class EdgeServer(web.Server):
    """Makes an :class:`EdgeRequestHandler` per connection; bodies capped at ``client_max_size``."""

    def __init__(
        self, handler: ProxyHandler, *, reject: Rejection, client_max_size: int, **kwargs: Any
    ) -> None:
        super().__init__(handler, request_factory=self._request, **kwargs)
        self._handler_options = kwargs
        self._reject = reject
        self._client_max_size = client_max_size

    def __call__(self) -> EdgeRequestHandler:
        return EdgeRequestHandler(
            self, reject=self._reject, loop=asyncio.get_running_loop(), **self._handler_options
        )

    def _request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        return web.BaseRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            asyncio.get_running_loop(),
            client_max_size=self._client_max_size,
        )


def traffic_runner(
    handler: ProxyHandler, reject: Rejection, settings: Settings
) -> web.ServerRunner:
    """The traffic listener's runner: ``handler`` behind aiohttp's low-level server."""
    server = EdgeServer(
        handler,
        reject=reject,
        client_max_size=settings.max_body_bytes,
        # aiohttp closes a connection that has not sent a whole request head this
        # long after it opened or after its last response: idle keep-alives and
        # slow-header clients alike. (A slow body is bounded by the same figure.)
        keepalive_timeout=settings.client_timeout_seconds,
        max_headers=MAX_REQUEST_HEADERS,
        max_field_size=MAX_HEADER_FIELD_BYTES,
        max_line_size=MAX_REQUEST_LINE_BYTES,
        # Bodies go upstream as the caller encoded them; the core decodes a bounded
        # copy where it must read one (aiohttp would inflate them without a bound).
        auto_decompress=False,
        # aiohttp's own access log is off: the proxy writes its own richer line.
        access_log=None,
    )
    # Cleanup comes after the drain has already given requests their time. (Not 0:
    # aiohttp reads a zero shutdown timeout as "wait for ever".)
    return web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.1)
