"""The lean HTTP/1.1 transport against real servers on sockets: reuse, framing, failures, TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trustme
from aiohttp import web

from proxy.adapters.upstream_http11 import Http11Transport
from proxy.adapters.upstream_http11_connection import HIGH_WATER
from proxy.core.errors import BadGateway, GatewayTimeout
from tests.support.fake_upstream import FakeUpstream
from tests.support.sidecar import free_port

CHAT = b'{"model": "fake-model", "messages": []}'


def _transport(origin: str, **options: float) -> Http11Transport:
    settings = {"connect_timeout": 1.0, "read_timeout": 1.0, "max_connections": 8, **options}
    return Http11Transport({"up": origin}, **settings)  # type: ignore[arg-type]


async def _post(transport: Http11Transport, url: str, body: bytes = CHAT) -> tuple[int, bytes]:
    response = await transport.send("up", "POST", url, [("Content-Type", "application/json")], body)
    try:
        return response.status, await response.read()
    finally:
        response.close()


async def test_connections_are_kept_alive_and_reused(upstream: FakeUpstream) -> None:
    """Sequential requests share one connection; the head and body arrive intact."""
    transport = _transport(upstream.url)
    for _ in range(3):
        status, body = await _post(transport, upstream.url + "/v1/chat/completions")
        assert status == 200
        assert b"Hello from the fake upstream." in body
    assert len(upstream.received) == 3
    assert len(transport._pools["up"]._live) == 1
    await transport.aclose()


async def test_idle_connections_are_closed_while_the_upstream_is_quiet(
    upstream: FakeUpstream,
) -> None:
    """Kept-alive connections idle past the idle time are closed by a timer, not on next use."""
    transport = _transport(upstream.url, idle_seconds=0.2)
    await asyncio.gather(
        *(_post(transport, upstream.url + "/v1/chat/completions") for _ in range(3))
    )
    pool = transport._pools["up"]
    assert len(pool._live) == 3
    await asyncio.sleep(0.5)  # no request in between: only the reaper can close them
    assert not pool._live
    assert upstream.open_connections == 0, "the upstream saw them closed too"
    status, _ = await _post(transport, upstream.url + "/v1/chat/completions")
    assert status == 200, "a fresh connection is opened afterwards"
    await transport.aclose()


async def test_chunked_stream_is_dechunked_and_streamed(upstream: FakeUpstream) -> None:
    """A chunked SSE reply arrives as body chunks, in order, without chunk framing."""
    upstream.chunk_delay = 0.01
    try:
        transport = _transport(upstream.url)
        body = b'{"model": "fake-model", "stream": true, "messages": []}'
        response = await transport.send(
            "up",
            "POST",
            upstream.url + "/v1/chat/completions",
            [("Content-Type", "application/json")],
            body,
        )
        assert response.content_type.startswith("text/event-stream")
        assert response.content_length is None
        chunks = [chunk async for chunk in response.iter_chunks()]
        response.close()
        text = b"".join(chunks)
        assert text.startswith(b"data: {")
        assert text.endswith(b"data: [DONE]\n\n")
        assert len(chunks) >= 6
        await transport.aclose()
    finally:
        upstream.chunk_delay = 0.2


@asynccontextmanager
async def _server(handler: object, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_server_closing_an_idle_connection_is_retried_once() -> None:
    """A kept-alive connection the server dropped is replaced, and the request succeeds."""
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await request.read()
        return web.Response(body=b"ok", headers={"Connection": "keep-alive"})

    async with _server(handler) as origin:
        transport = _transport(origin)
        assert await _post(transport, origin + "/a") == (200, b"ok")
        for connection in list(transport._pools["up"]._idle):  # the server side would do this
            assert connection._transport is not None
            connection._transport.close()
        await asyncio.sleep(0.05)
        assert await _post(transport, origin + "/b") == (200, b"ok")
        await transport.aclose()
    assert calls == 2


async def test_failures_are_translated(upstream: FakeUpstream) -> None:
    """Refused, reset, garbage and silence become BadGateway and GatewayTimeout."""
    transport = _transport(upstream.url)
    url = upstream.url + "/v1/chat/completions"
    with pytest.raises(BadGateway) as refused:
        await _post(_transport(f"http://127.0.0.1:{free_port()}"), "http://x/")
    assert refused.value.code == "upstream_unreachable"
    with pytest.raises(BadGateway) as reset:
        await _post(transport, url, b'{"model": "reset"}')
    assert reset.value.code == "upstream_reset"
    with pytest.raises(BadGateway):
        await _post(transport, url, b'{"model": "garbage"}')
    with pytest.raises(GatewayTimeout):
        await _post(transport, url, b'{"model": "hang"}')
    status, _ = await _post(transport, url)  # and the transport is still good
    assert status == 200
    await transport.aclose()


async def test_slow_reader_pauses_the_upstream() -> None:
    """A caller that does not read keeps at most about HIGH_WATER bytes buffered."""
    big = b"x" * (64 * 1024)

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(64):  # 4 MiB
            await response.write(big)
        await response.write_eof()
        return response

    async with _server(handler) as origin:
        transport = _transport(origin, read_timeout=5.0)
        response = await transport.send("up", "GET", origin + "/big", [], b"")
        await asyncio.sleep(0.3)
        assert response._buffered <= HIGH_WATER + len(big) * 2
        total = sum([len(chunk) async for chunk in response.iter_chunks()])
        response.close()
        assert total == 64 * len(big)
        await transport.aclose()


async def test_tls_upstream(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """HTTPS upstreams are verified against the trust store (SSL_CERT_FILE honoured)."""
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = f"{tmp_path}/ca.pem"
    authority.cert_pem.write_to_path(ca_file)

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=b"secure")

    async with _server(handler, tls=server_context) as origin:
        with pytest.raises(BadGateway):  # unknown authority: refused
            await _post(_transport(origin), origin + "/")
        monkeypatch.setenv("SSL_CERT_FILE", ca_file)
        transport = _transport(origin)
        assert await _post(transport, origin + "/") == (200, b"secure")
        await transport.aclose()
