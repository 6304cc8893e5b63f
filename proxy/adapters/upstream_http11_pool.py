"""Keep-alive connections to one upstream origin, for the HTTP/1.1 transport.

A pool (one per upstream, owned by ``upstream_http11.Http11Transport``) is LIFO, so warm
connections are reused; idle ones are closed after ``IDLE_SECONDS`` (by a timer). At most
``max_connections`` are open at once: a request finding all of them busy waits at most
``pool_timeout``, then gets 503. TLS uses the system trust store (``SSL_CERT_FILE``
honoured, plus an upstream's ``CA_FILE``). Connecting has its own timeout; a pool may
leave through a forward proxy (``upstream_egress``, ADR 0090): a CONNECT tunnel is just
another way to connect. Connect failures become the core's ``GatewayTimeout`` and
``BadGateway`` (``sent=False``: nothing was written).

A pooled connection already known closed, half-closed or idle too long is never handed
out again (ADR 0003), and nothing is awaited between that check and the caller's write.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
from typing import cast
from urllib.parse import urlsplit

from proxy.adapters.upstream_egress import Egress, open_via_proxy
from proxy.adapters.upstream_http11_connection import Http11Connection
from proxy.core.errors import BadGateway, GatewayTimeout, ServiceUnavailable

IDLE_SECONDS = 30.0
"""Idle keep-alive connections are closed after this (by a timer): below common server
keep-alives."""


def system_trust() -> ssl.SSLContext:
    """One verifying context on the system store for every pool that adds no ``CA_FILE``:
    loading the store costs ~20 ms and ~1 MB per context, and the three built-in
    upstreams would each load it at start. Keyed by the variables that move the store."""
    return _system_trust(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.cache
def _system_trust(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return ssl.create_default_context()


class Http11Pool:
    """Keep-alive connections to one upstream origin."""

    def __init__(
        self,
        name: str,
        origin: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        pool_timeout: float,
        idle_seconds: float,
        egress: Egress | None = None,
    ) -> None:
        parts = urlsplit(origin)
        secure = parts.scheme == "https"
        self.name = name
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if secure else 80)
        default_port = parts.port is None or parts.port == (443 if secure else 80)
        literal = f"[{self.host}]" if ":" in self.host else self.host  # IPv6: bracketed
        host_header = literal if default_port else f"{literal}:{self.port}"
        self.host_line = f"Host: {host_header}\r\n".encode()
        # Everything up to the path: what ``send`` cuts off a full URL.
        self.prefix_length = len(f"{parts.scheme}://{parts.netloc}")
        egress = egress or Egress()
        self.ssl: ssl.SSLContext | None = None
        if secure and egress.ca_file is not None:
            self.ssl = ssl.create_default_context()
            self.ssl.load_verify_locations(cafile=egress.ca_file)  # beside the system store
        elif secure:
            self.ssl = system_trust()
        self.proxy = egress.proxy
        self.target_prefix = ""
        """Before the origin-form target: ``http://host`` for absolute-form through a proxy."""
        if self.proxy is not None and not secure:
            self.target_prefix = f"http://{host_header}"
            if self.proxy.authorization is not None:
                self.host_line += f"Proxy-Authorization: {self.proxy.authorization}\r\n".encode()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self.idle_seconds = idle_seconds
        self._idle: list[Http11Connection] = []
        """Idle connections, oldest first (released ones are appended, reused ones popped)."""
        self._reaper: asyncio.TimerHandle | None = None
        self._slots = asyncio.Semaphore(max_connections)
        self._live: set[Http11Connection] = set()

    async def acquire(self, *, fresh: bool = False) -> Http11Connection:
        """A connection with a slot: the warmest usable idle one, or (``fresh``) a new one.

        Nothing is awaited between the checks below and the caller's write, so a
        connection found open here is still open when the request is written.
        """
        await self._take_slot()
        loop = asyncio.get_running_loop()
        if not fresh:
            idle = self._idle
            fresh_since = loop.time() - self.idle_seconds
            while idle:
                connection = idle.pop()
                transport = connection._transport
                if (
                    not connection.closed
                    and connection.idle_since > fresh_since
                    and transport is not None
                    and not transport.is_closing()
                ):
                    return connection
                connection.abort()
        try:
            if self.proxy is None:
                async with asyncio.timeout(self.connect_timeout):
                    _, connection = await loop.create_connection(
                        lambda: Http11Connection(self),
                        self.host,
                        self.port,
                        ssl=self.ssl,
                        server_hostname=self.host if self.ssl else None,
                    )
            else:  # a CONNECT tunnel (https), or the proxy itself (http, absolute-form)
                protocol = await open_via_proxy(
                    self.proxy,
                    lambda: Http11Connection(self),
                    name=self.name,
                    host=self.host,
                    port=self.port,
                    tls=self.ssl,
                    connect_timeout=self.connect_timeout,
                )
                connection = cast(Http11Connection, protocol)
        except BaseException as exc:
            self._slots.release()  # whatever ended the connect, cancellation included
            if isinstance(exc, TimeoutError):
                raise GatewayTimeout(  # nothing was written: safe to send elsewhere
                    f"Upstream {self.name!r} did not accept a connection in time.", sent=False
                ) from None
            if isinstance(exc, OSError):
                raise BadGateway(
                    f"Upstream {self.name!r} is unreachable.",
                    code="upstream_unreachable",
                    sent=False,
                    outcome="unreachable",
                ) from None
            raise
        self._live.add(connection)
        return connection

    async def _take_slot(self) -> None:
        slots = self._slots
        if not slots.locked():
            await slots.acquire()  # free: returns at once, no timer needed
            return
        try:
            async with asyncio.timeout(self.pool_timeout):
                await slots.acquire()
        except TimeoutError:
            # Every connection is busy: shed this request rather than queue it forever.
            raise ServiceUnavailable(
                f"Upstream {self.name!r} has no free connection; retry shortly.",
                code="upstream_pool_exhausted",
                headers={"Retry-After": "1"},
            ) from None

    def release(self, connection: Http11Connection | None) -> None:
        """A connection's exchange ended: keep it for reuse (or not) and free its slot."""
        if connection is not None:
            loop = asyncio.get_running_loop()
            connection.idle_since = loop.time()
            self._idle.append(connection)
            if self._reaper is None:
                self._reaper = loop.call_later(self.idle_seconds, self._reap)
        self._slots.release()

    def _reap(self) -> None:
        """Close connections idle past ``idle_seconds``: a quiet upstream keeps no sockets."""
        loop = asyncio.get_running_loop()
        idle, now = self._idle, loop.time()
        stale = 0
        while stale < len(idle) and now - idle[stale].idle_since >= self.idle_seconds:
            stale += 1
        for connection in idle[:stale]:
            connection.abort()
        del idle[:stale]
        self._reaper = (
            loop.call_at(idle[0].idle_since + self.idle_seconds, self._reap) if idle else None
        )

    def forget(self, connection: Http11Connection) -> None:
        self._live.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for connection in list(self._live):
            connection.abort()
        self._idle.clear()
