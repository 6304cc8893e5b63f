"""The traffic listener's one handler: adapt aiohttp to the core service, map its errors.

Error mapping lives here rather than in a middleware: the proxy route is the only
route on this listener, and a middleware would add a frame and a partial to every
request on the hot path for no gain in separation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import structlog
from aiohttp import HttpVersion10 as HTTP_1_0
from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.body_budget import BodyHold
from proxy.core.correlation import correlation_id_for
from proxy.core.errors import (
    BadRequest,
    ClientDisconnected,
    ExpectationFailed,
    PayloadTooLarge,
    ProxyError,
    RequestTimeout,
)
from proxy.core.exchange import STATUS_CLIENT_CLOSED, Exchange
from proxy.core.ports import Body, Clock, Headers, Observer, RequestTracer
from proxy.core.service import ProxyService
from proxy.entrypoints.answers import CORRELATION_HEADER, error_response, refusal
from proxy.entrypoints.verbatim_head import VerbatimResponse, VerbatimStreamResponse

_log = structlog.get_logger("llm_sidecar.proxy")


class AiohttpInbound:
    """``InboundRequest`` over an aiohttp request; the body must arrive within ``body_timeout``.

    The server runs with ``auto_decompress=False``: the body read here is the one the
    caller sent, ``Content-Encoding`` and all, and goes upstream as such.
    """

    __slots__ = (
        "_body_timeout",
        "_request",
        "authorization",
        "content_encoding",
        "content_type",
        "headers",
        "method",
        "path",
    )

    def __init__(self, request: web.BaseRequest, body_timeout: float) -> None:
        self._request = request
        self._body_timeout = body_timeout
        headers = request.headers
        self.method = request.method
        self.path = request.raw_path
        self.headers: Iterable[tuple[str, str]] = headers.items()
        self.authorization = headers.get("Authorization") or _sdk_key(headers)
        self.content_type = headers.get("Content-Type", "")
        self.content_encoding = headers.get("Content-Encoding", "")

    async def read_body(self, limit: int, hold: BodyHold) -> Body:
        request = self._request
        headers = request.headers
        expect = ",".join(headers.getall("Expect")).strip().lower() if "Expect" in headers else ""
        if expect and expect != "100-continue":
            raise ExpectationFailed("Only 'Expect: 100-continue' is supported.")
        length = request.content_length
        if length is not None:
            _check_size(length, limit)
        if not request.body_exists:
            return b""
        content = request.content
        if length is not None:
            hold.take(length)  # known up front: refuse before reading a byte of it
        try:
            if not content.is_eof():
                if expect:  # curl asks before large bodies; unanswered, it waits a second
                    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                async with asyncio.timeout(self._body_timeout):
                    return await _read_all(content, limit, length, hold)
            return await _read_all(content, limit, length, hold)
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {self._body_timeout:g} s."
            ) from None
        except HttpProcessingError:
            # Framing the parser found broken once the head had gone through (bad chunk
            # sizes, a short body): the caller's fault, answered without quoting it.
            raise BadRequest("The request body is malformed.", code="malformed_body") from None
        except ConnectionError as exc:
            raise ClientDisconnected from exc


def _sdk_key(headers: CIMultiDictProxy[str]) -> str | None:
    """The sidecar key where the Anthropic SDK (``x-api-key``) or ``AzureOpenAI``
    (``api-key``) put it, as the ``Authorization`` value the authenticator reads."""
    key = headers.get("x-api-key") or headers.get("api-key")
    return f"Bearer {key}" if key else None


async def _read_all(content: StreamReader, limit: int, length: int | None, hold: BodyHold) -> Body:
    """Every byte of a body as it arrives, holding as little as possible twice.

    A body declared with a length is copied chunk by chunk into one buffer of that size
    (already charged to ``hold``): one copy in memory, not the chunks plus their join. A
    chunked one is charged per chunk: the limits apply to what arrives, not to what was
    promised.
    """
    first = await content.readany()
    if content.is_eof() or not first:  # the whole body in one piece: no copy at all
        if length is None:
            _check_size(len(first), limit)
            hold.take(len(first))
        return first
    if length is not None:
        body = bytearray(length)
        with memoryview(body) as view:
            filled, chunk = 0, first
            while chunk:
                view[filled : filled + len(chunk)] = chunk  # the parser never overruns it
                filled += len(chunk)
                chunk = await content.readany()
        return body
    chunks, size, chunk = [], 0, first
    while chunk:
        size += len(chunk)
        _check_size(size, limit)
        hold.take(len(chunk))
        chunks.append(chunk)
        chunk = await content.readany()
    return b"".join(chunks)


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise PayloadTooLarge(f"Request body is over the {limit}-byte limit.")


class AiohttpSink:
    """``ResponseSink`` writing an aiohttp response; the handler returns ``response``."""

    __slots__ = ("_correlation_id", "_request", "response")

    def __init__(self, request: web.BaseRequest, correlation_id: str) -> None:
        self._request = request
        self._correlation_id = correlation_id
        self.response: web.StreamResponse | None = None

    def _headers(self, headers: Headers) -> CIMultiDict[str]:
        merged = CIMultiDict(headers)
        merged[CORRELATION_HEADER] = self._correlation_id
        return merged

    async def start(self, status: int, headers: Headers, *, verbatim: bool = False) -> None:
        kind = VerbatimStreamResponse if verbatim else web.StreamResponse
        response = kind(status=status, headers=self._headers(headers))
        self.response = response
        try:
            await response.prepare(self._request)
        except ConnectionError as exc:
            raise ClientDisconnected from exc

    async def write(self, chunk: bytes) -> None:
        assert self.response is not None
        try:
            await self.response.write(chunk)
        except ConnectionError as exc:
            raise ClientDisconnected from exc

    async def finish(self) -> None:
        assert self.response is not None
        try:
            await self.response.write_eof()
        except ConnectionError as exc:
            raise ClientDisconnected from exc

    async def send_whole(
        self, status: int, headers: Headers, body: bytes, *, verbatim: bool = False
    ) -> None:
        kind = VerbatimResponse if verbatim else web.Response
        response = kind(status=status, headers=self._headers(headers), body=body)
        self.response = response
        try:
            await response.prepare(self._request)
            await response.write_eof()
        except ConnectionError as exc:
            raise ClientDisconnected from exc


def make_proxy_handler(
    service: ProxyService,
    observer: Observer,
    tracer: RequestTracer,
    clock: Clock,
    body_timeout: float,
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The catch-all handler; everything it needs is bound once, here."""
    bind = structlog.contextvars.bind_contextvars
    clear = structlog.contextvars.clear_contextvars
    refuse = refusal(observer, clock)

    async def proxy(request: web.BaseRequest) -> web.StreamResponse:
        headers = request.headers
        # An upgrade needs both headers (a lone Upgrade is hop-by-hop noise, dropped).
        upgrade = request.method == "CONNECT" or (
            "Upgrade" in headers and "upgrade" in headers.get("Connection", "").lower()
        )
        if upgrade or request.version < HTTP_1_0:
            return refuse(request, upgrade)
        exchange = Exchange(
            correlation_id_for(headers.get(CORRELATION_HEADER)),
            request.method,
            request.raw_path,
            clock(),
        )
        bind(correlation_id=exchange.correlation_id)
        span = tracer.start(exchange, headers)
        sink = AiohttpSink(request, exchange.correlation_id)
        try:
            await service.handle(AiohttpInbound(request, body_timeout), sink, exchange)
        except ProxyError as error:  # the service has written it on the exchange already
            if sink.response is not None:
                # The head is out: all that is left is to cut the stream short. The access
                # line and the metrics still say what went wrong (502/504, not the 200 head).
                _abort(request)
                return sink.response
            response = error_response(error, exchange.correlation_id)
            if isinstance(error, RequestTimeout):
                response.force_close()  # the rest of a stalled body is not worth waiting for
            return response
        except ClientDisconnected:
            exchange.status = STATUS_CLIENT_CLOSED
            return sink.response or web.Response(status=STATUS_CLIENT_CLOSED)
        except Exception:
            if sink.response is not None:
                _abort(request)
                return sink.response
            exchange.status = 500
            _log.exception("unhandled error in proxy route")
            return error_response(
                ProxyError("The sidecar failed to handle the request."), exchange.correlation_id
            )
        finally:
            tracer.finish(exchange, span)
            observer.request_finished(exchange)
            clear()
        assert sink.response is not None
        return sink.response

    return proxy


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()
