"""The sidecar's own answers on the traffic listener: its errors in OpenAI's shape, and
what it says to requests it will not proxy (unsupported protocols) or could not parse."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import structlog
from aiohttp import web

from proxy.core import correlation
from proxy.core.correlation import correlation_id_for, new_id
from proxy.core.errors import BadRequest, ProxyError
from proxy.core.exchange import Exchange
from proxy.core.ports import Clock, Observer

CORRELATION_HEADER = correlation.HEADER
_log = structlog.get_logger("llm_sidecar.proxy")


def error_response(error: ProxyError, correlation_id: str) -> web.Response:
    """The OpenAI error shape, with the error's headers and the correlation id."""
    body = orjson.dumps(
        {
            "error": {
                "message": error.message,
                "type": error.error_type,
                "param": None,
                "code": error.code,
            }
        }
    )
    response = web.Response(
        status=error.status, body=body, content_type="application/json", headers=error.headers
    )
    response.headers[CORRELATION_HEADER] = correlation_id
    return response


def refusal(observer: Observer, clock: Clock) -> Callable[[web.BaseRequest, bool], web.Response]:
    def refuse(request: web.BaseRequest, upgrade: bool) -> web.Response:
        """400 for what the sidecar does not proxy: protocol upgrades and HTTP/0.9.

        An upgrade would hand the connection over (aiohttp would read the rest of it as
        the body); an HTTP/0.9 request line has no version, so a bare LF in its target
        would have become a header line.
        """
        exchange = Exchange(
            correlation_id_for(request.headers.get(CORRELATION_HEADER)),
            request.method,
            request.raw_path,
            clock(),
        )
        error = BadRequest(
            "Protocol upgrades (WebSocket, h2c) and CONNECT are not proxied."
            if upgrade
            else "HTTP/0.9 requests are not accepted.",
            code="unsupported_protocol",
        )
        return closing_error(observer, exchange, error)

    return refuse


def closing_error(observer: Observer, exchange: Exchange, error: ProxyError) -> web.Response:
    """The error answer, logged and counted, on a connection closed after it."""
    exchange.status = error.status
    observer.request_finished(exchange)
    response = error_response(error, exchange.correlation_id)
    response.force_close()
    return response


def make_rejection(
    observer: Observer, clock: Clock
) -> Callable[[int, BaseException | None], web.Response]:
    """The answer to a request aiohttp's parser rejected (or a failure outside the handler).

    The request never parsed, so nothing of it is trusted or repeated: the message names
    only the kind of error (its class), the access line has no method or path.
    """

    def reject(status: int, exc: BaseException | None) -> web.Response:
        exchange = Exchange(new_id(), "-", "-", clock())
        if status < 500:
            kind = type(exc).__name__ if exc is not None else "unknown"
            error: ProxyError = BadRequest(
                f"The request is not valid HTTP/1.1 ({kind}).", code="malformed_http"
            )
        else:
            # A failure outside the proxy handler: a bug worth its traceback (redacted).
            _log.error("unhandled error outside the proxy route", exc_info=exc)
            error = ProxyError("The sidecar failed to handle the request.")
        return closing_error(observer, exchange, error)

    return reject
