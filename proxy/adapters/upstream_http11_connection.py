"""One keep-alive HTTP/1.1 connection to an upstream.

The protocol writes a request as one buffer and parses the reply with ``httptools``
(llhttp) into an ``Http11Response`` (``upstream_http11_response``: the body, chunk by
chunk, with back-pressure). The pool that owns the connection (``upstream_http11_pool``)
decides about reuse.

llhttp frames messages but leaves three things to its caller, done here (ADR 0003):
a body delimited by the connection's close ends at a clean close (llhttp has no
``finish()``); whatever follows a complete response belongs to no response and makes
the connection unusable (llhttp would parse it as the next message); and the head is
capped as aiohttp's client caps it (``MAX_FIELD`` bytes per field, ``MAX_FIELDS``
fields), with at most ``MAX_UNFRAMED`` bytes taken in before the head ends (or, in a
body, between two body bytes: trailers), so a flood cannot grow memory.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import httptools

from proxy.adapters.upstream_http11_response import Http11Response
from proxy.adapters.waiting import wait_resolved
from proxy.core.errors import BadGateway, GatewayTimeout

MAX_FIELD = 8190
"""Bytes in one header field, name and value: aiohttp's ``max_field_size``."""
MAX_FIELDS = 128
"""Header fields in a head: aiohttp's ``max_headers``."""
MAX_UNFRAMED = 256 * 1024
"""Bytes parsed without a body byte among them: the heads of one exchange (1xx ones
included), or trailers. aiohttp has no such cap; 128 fields of 8190 bytes would be 1 MiB."""
NO_BODY_STATUSES = (204, 304)
_PARSE_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)  # not a subclass


class ConnectionOwner(Protocol):
    """What a connection tells its pool."""

    name: str

    def release(self, connection: Http11Connection | None) -> None: ...
    def forget(self, connection: Http11Connection) -> None: ...


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
        self._until_close = False
        """The body ends where the connection does (no length, not chunked)."""
        self._head_only = False
        self._head_done = False
        self._unframed = 0
        self._paused = False
        self.closed = False
        self.idle_since = 0.0
        self.exchanges = 0
        self.received = False
        """A byte of the current exchange's response arrived."""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._response is None or self._complete:
            # Bytes nobody asked for, or after a complete response: they belong to no
            # response, and the connection's framing can no longer be trusted.
            self.abort()
            return
        self.received = True
        unframed = self._unframed + len(data)
        if unframed > MAX_UNFRAMED:
            self._over_cap(data, unframed)
            return
        self._unframed = unframed  # on_body sets it back to 0
        try:
            self._parser.feed_data(data)
        except _PARSE_ERRORS as exc:
            self._parse_failed(exc)

    def _over_cap(self, data: bytes, unframed: int) -> None:
        """Past ``MAX_UNFRAMED`` bytes without a body byte: a head, or trailers, too long."""
        parser = self._parser
        try:
            if not self._head_done:  # parse up to the cap only: a head not ended there is refused
                cut = MAX_UNFRAMED - self._unframed
                self._unframed = MAX_UNFRAMED
                parser.feed_data(data[:cut])
                if not self._head_done:
                    self._fail(self._malformed())
                    return
                data = data[cut:]
                unframed = len(data)
            self._unframed = unframed
            parser.feed_data(data)
        except _PARSE_ERRORS as exc:
            self._parse_failed(exc)
            return
        if self._unframed > MAX_UNFRAMED and not self._complete:
            self._fail(self._malformed())  # trailers past the cap

    def _parse_failed(self, exc: Exception) -> None:
        if self._complete:  # what followed a complete response: not ours
            self.abort()
        elif isinstance(exc, httptools.HttpParserUpgrade):
            self._fail(BadGateway(f"Upstream {self._pool.name!r} tried to switch protocols."))
        else:
            self._fail(self._malformed())

    def eof_received(self) -> None:
        # The upstream half-closed: the pool must not hand this connection out again. The
        # transport closes (nothing returned), and connection_lost ends the exchange.
        self.closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        response = self._response
        if response is None or self._complete:
            return
        if self._until_close and exc is None:  # a clean close ends a close-delimited body
            self._complete = True
            response.feed_eof()
        else:
            self._fail(
                BadGateway(
                    f"Upstream {self._pool.name!r} closed the connection.", code="upstream_reset"
                )
            )

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:  # trailers (aiohttp drops them too), or a message unasked
            return
        response = self._response
        assert response is not None
        headers = response.headers
        # No field can pass MAX_FIELD in a head that has not: most heads skip the checks
        # (the field count of a short head is checked when it ends).
        if self._unframed > MAX_FIELD and (
            len(name) + len(value) > MAX_FIELD or len(headers) >= MAX_FIELDS
        ):
            raise _HeadTooLarge
        key = name.decode("latin-1")
        # llhttp strips the whitespace before a value, not after (RFC 9110 5.5 drops both).
        text = value.rstrip(b" \t").decode("utf-8", "surrogateescape")
        if not value.isascii() and _not_utf8(value):
            response.verbatim_head = True  # escaped bytes: the caller must get them as they came
        headers.append((key, text))
        lowered = key.lower()
        if lowered == "content-length":
            response.content_length = int(text) if text.isdigit() else None
        elif lowered == "content-type":
            response.content_type = text
        elif lowered == "content-encoding":
            response.content_encoding = text

    def on_headers_complete(self) -> None:
        if self._complete:  # a second message after the one asked for: stop parsing
            raise _Unsolicited
        response = self._response
        assert response is not None
        if len(response.headers) > MAX_FIELDS:
            raise _HeadTooLarge
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # informational (103 Early Hints): wait for the real head
            response.headers = []
            response.content_length = None
            response.content_type = response.content_encoding = ""
            return
        response.status = status
        self._head_done = True
        # Read now: llhttp answers for the message being parsed, not after it is done.
        self._keep_alive = keep_alive = self._parser.should_keep_alive()
        if not keep_alive and response.content_length is None:
            self._until_close = status not in NO_BODY_STATUSES and not _chunked(response)
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        if self._head_only:  # no body follows a HEAD's head, whatever it announces
            self._complete = True
            response.feed_eof()
            raise _Unsolicited  # llhttp would take what follows as that body: stop it

    def on_body(self, body: bytes) -> None:
        self._unframed = 0
        response = self._response
        assert response is not None
        response.feed(body)

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
        self.received = self._complete = self._head_done = self._until_close = False
        self._head_only = head_only
        self._unframed = 0
        head = self._head = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        try:
            await wait_resolved(head, read_timeout)
        except TimeoutError:
            self.abort()
            raise GatewayTimeout(f"Upstream {upstream!r} did not answer in time.") from None
        return response

    def _malformed(self) -> BadGateway:
        return BadGateway(f"Upstream {self._pool.name!r} sent a malformed response.")

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
        self._until_close = False  # our own abort never ends a body cleanly
        if self._transport is not None:
            self._transport.abort()


class _Unsolicited(Exception):
    """Raised in a parser callback to stop llhttp after the response asked for."""


class _HeadTooLarge(Exception):
    """Raised in a parser callback: a header field or the field count is over its cap."""


def _chunked(response: Http11Response) -> bool:
    # Only for a head without Content-Length that does not keep the connection alive
    # (rare), so the common head is not scanned twice. RFC 9112 6.3: chunked if last.
    return any(
        name.lower() == "transfer-encoding" and value.lower().endswith("chunked")
        for name, value in response.headers
    )


def _not_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
