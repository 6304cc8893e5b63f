"""Egress through a forward proxy: the way through it (ADR 0090).

Which proxy an origin uses is decided once per upstream pool, at start, by the pure
``proxy.core.forward_proxy`` (``egress_for``, ``NoProxy``, ``parse_proxy_url``; re-exported
here), which settings validate with too.

The way through (``open_via_proxy``, the pool's connect step for a proxied pool): an
``https`` origin gets a ``CONNECT host:port`` tunnel, then TLS to the origin inside it
(``loop.start_tls``, certificate and host name verified); an ``http`` origin gets a plain
connection to the proxy and absolute-form request targets (the pool's ``host_line`` then
carries ``Proxy-Authorization``). Either way the result is an ``Http11Connection``, pooled
and kept alive like a direct one. The proxy's own failures (refused, timed out, a CONNECT
answered other than 2xx, 407 included) are ``BadGateway(code="egress_proxy_error")``; no
message names the proxy's URL or credentials.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from proxy.core.errors import BadGateway
from proxy.core.forward_proxy import Egress as Egress
from proxy.core.forward_proxy import ForwardProxy as ForwardProxy
from proxy.core.forward_proxy import NoProxy as NoProxy
from proxy.core.forward_proxy import egress_for as egress_for
from proxy.core.forward_proxy import parse_proxy_url as parse_proxy_url

CONNECT_HEAD_LIMIT = 16 * 1024
"""Bytes of a CONNECT answer's head read at most: a proxy's answer is a few lines."""


class _ConnectAnswer(asyncio.Protocol):
    """Reads the proxy's answer to ``CONNECT``, up to the end of its head."""

    def __init__(self) -> None:
        self.head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.trailing = False
        """Bytes followed the head (a refusal's body; after a 2xx, the origin too early)."""
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            self.trailing = True
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end >= 0:
            self.trailing = end + 4 < len(self._buffer)
            self.head.set_result(bytes(self._buffer[: end + 4]))
        elif len(self._buffer) > CONNECT_HEAD_LIMIT:
            self.head.set_result(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_result(b"")


def _status(head: bytes) -> int:
    line = head.split(b"\r\n", 1)[0].split(b" ", 2)
    return (
        int(line[1])
        if len(line) > 1 and line[0].startswith(b"HTTP/1.") and line[1].isdigit()
        else 0
    )


def proxy_refused(name: str, status: int = 407) -> BadGateway:
    """The proxy answered 407 (tinyproxy: 401 to CONNECT): credentials missing or wrong."""
    return _proxy_failed(name, f"the proxy refused its credentials ({status})")


def _proxy_failed(name: str, why: str) -> BadGateway:
    return BadGateway(
        f"Upstream {name!r} could not be reached through the egress proxy: {why}.",
        code="egress_proxy_error",
        sent=False,
        outcome="unreachable",
    )


async def open_via_proxy(
    proxy: ForwardProxy,
    factory: Callable[[], asyncio.Protocol],
    *,
    name: str,
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    connect_timeout: float,
) -> asyncio.Protocol:
    """A connection to ``host:port`` through ``proxy``, with ``factory``'s protocol on it.

    ``tls`` set: a ``CONNECT`` tunnel with TLS to the origin inside; unset: a connection
    to the proxy itself (absolute-form requests). Timeouts, refusals and answers from the
    proxy are ``egress_proxy_error``; the origin's TLS failing or timing out inside the
    tunnel is the origin's (``OSError`` / ``TimeoutError``, translated by the pool).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + connect_timeout
    if tls is None:
        try:
            async with asyncio.timeout_at(deadline):
                _, protocol = await loop.create_connection(factory, proxy.host, proxy.port)
        except TimeoutError:
            raise _proxy_failed(name, "the proxy did not accept a connection in time") from None
        except OSError:
            raise _proxy_failed(name, "the proxy refused or failed the connection") from None
        return protocol
    answer = _ConnectAnswer()
    transport: asyncio.Transport | None = None
    try:
        try:
            async with asyncio.timeout_at(deadline):
                transport, _ = await loop.create_connection(lambda: answer, proxy.host, proxy.port)
                literal = f"[{host}]" if ":" in host else host
                request = f"CONNECT {literal}:{port} HTTP/1.1\r\nHost: {literal}:{port}\r\n"
                if proxy.authorization is not None:
                    request += f"Proxy-Authorization: {proxy.authorization}\r\n"
                transport.write((request + "\r\n").encode())
                head = await answer.head
        except TimeoutError:
            raise _proxy_failed(name, "the proxy did not answer CONNECT in time") from None
        except OSError:
            raise _proxy_failed(name, "the proxy refused or failed the connection") from None
        status = _status(head)
        if status in (401, 407):
            raise proxy_refused(name, status)
        if not 200 <= status < 300:
            raise _proxy_failed(name, f"the proxy answered CONNECT with {status or 'garbage'}")
        if answer.trailing:  # the origin must not speak before our TLS hello
            raise _proxy_failed(name, "the proxy sent bytes after its CONNECT answer")
        protocol = factory()
        async with asyncio.timeout_at(deadline):
            tunnelled = await loop.start_tls(
                transport,
                protocol,
                tls,
                server_hostname=host,
            )
        assert tunnelled is not None
        protocol.connection_made(tunnelled)
        return protocol
    except BaseException:
        if transport is not None:
            transport.abort()
        raise
