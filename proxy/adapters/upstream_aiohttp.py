"""The upstream transport: one long-lived aiohttp ``ClientSession`` per upstream.

Library errors are translated here, at the edge, into the core's ``BadGateway`` and
``GatewayTimeout``; nothing aiohttp-specific crosses into the core.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

import aiohttp
from yarl import URL

from proxy.core.errors import BadGateway, GatewayTimeout
from proxy.core.ports import Headers

# The caller's own values (or their absence) are forwarded, not aiohttp's defaults.
_SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


def _translated(exc: BaseException, upstream: str) -> Exception:
    """Map an aiohttp/OS error to the core's 502/504, without echoing URLs or headers."""
    if isinstance(exc, asyncio.TimeoutError):
        return GatewayTimeout(f"Upstream {upstream!r} did not answer in time.")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return BadGateway(f"Upstream {upstream!r} is unreachable.", code="upstream_unreachable")
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return BadGateway(f"Upstream {upstream!r} sent a malformed response.")
    return BadGateway(f"Upstream {upstream!r} closed the connection.", code="upstream_reset")


class AiohttpUpstreamResponse:
    """The response head, and the body on demand."""

    __slots__ = (
        "_response",
        "_upstream",
        "content_encoding",
        "content_length",
        "content_type",
        "headers",
        "status",
    )

    def __init__(self, response: aiohttp.ClientResponse, upstream: str) -> None:
        self._response = response
        self._upstream = upstream
        self.status = response.status
        raw = response.headers
        self.headers: Headers = list(raw.items())
        self.content_length = response.content_length
        self.content_type = raw.get("Content-Type", "")
        self.content_encoding = raw.get("Content-Encoding", "")

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _translated(exc, self._upstream) from exc

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise _translated(exc, self._upstream) from exc
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        # A fully read body returns the connection to the pool; a half-read one is dropped.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport:
    """Implements ``UpstreamTransport`` over one ``ClientSession`` per upstream."""

    __slots__ = ("_sessions",)

    def __init__(self, sessions: Mapping[str, aiohttp.ClientSession]) -> None:
        self._sessions = dict(sessions)

    @classmethod
    def create(
        cls,
        upstreams: Iterable[str],
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> AiohttpTransport:
        # No total timeout: a stream may last as long as tokens keep coming.
        # sock_read bounds the wait for the head and every idle gap between chunks.
        timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        sessions = {
            name: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=max_connections, ttl_dns_cache=300, enable_cleanup_closed=False
                ),
                timeout=timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=_SKIP_AUTO_HEADERS,
                trace_configs=list(trace_configs) or None,
                raise_for_status=False,
            )
            for name in upstreams
        }
        return cls(sessions)

    async def send(
        self,
        upstream: str,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
    ) -> AiohttpUpstreamResponse:
        session = self._sessions[upstream]
        try:
            response = await session.request(
                method,
                URL(url, encoded=True),
                headers=list(headers),
                data=body or None,
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _translated(exc, upstream) from exc
        return AiohttpUpstreamResponse(response, upstream)

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()
