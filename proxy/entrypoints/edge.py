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
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from proxy.entrypoints.app import PROXY_HANDLER, REJECTION
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


class TrafficRunner(web.ServerRunner):
    """Serves ``app``'s proxy handler, running the app's start-up and clean-up around it."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        server = EdgeServer(
            app[PROXY_HANDLER],
            reject=app[REJECTION],
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
        super().__init__(server, shutdown_timeout=0.1)
        self.app = app

    async def setup(self) -> None:
        self.app.freeze()
        await self.app.startup()
        await super().setup()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self.app.shutdown()
        await self.app.cleanup()
