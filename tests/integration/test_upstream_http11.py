"""The lean HTTP/1.1 transport against real servers on sockets: reuse, framing, failures, TLS.

The findings of ADR 0003 each have a test here against a scripted raw-TCP upstream;
``test_upstream_differential.py`` runs the same and more scripts against aiohttp too.
"""

from __future__ import annotations

import asyncio
import ssl
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trustme
from aiohttp import web

from proxy.adapters.upstream_http11 import Http11Transport
from proxy.adapters.upstream_http11_response import HIGH_WATER
from proxy.core.errors import BadGateway, GatewayTimeout
from tests.support.fake_upstream import FakeUpstream
from tests.support.scripted_upstream import (
    CLOSE,
    READ,
    Flood,
    Pause,
    ScriptedUpstream,
    Step,
    Write,
    response,
)
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


async def test_connection_known_closed_is_not_written_to() -> None:
    """A kept-alive connection closed while idle is replaced before the request is written."""
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


FIRST, SECOND = response(200, b"first"), response(200, b"second")
END = b"\r\nContent-Length: 0\r\n\r\n"


async def test_post_is_never_sent_twice() -> None:
    """A POST written to a reused connection that then drops fails; it is not sent again."""
    scripts: list[list[Step]] = [[READ, Write(FIRST), READ, CLOSE], [READ, Write(SECOND)]]
    async with ScriptedUpstream(scripts) as upstream:
        transport = _transport(upstream.origin)
        assert await _post(transport, upstream.origin + "/a") == (200, b"first")
        with pytest.raises(BadGateway) as dropped:
            await _post(transport, upstream.origin + "/b")
        await transport.aclose()
    assert dropped.value.code == "upstream_reset"
    assert [len(served.requests) for served in upstream.served] == [2]


async def _get(transport: Http11Transport, origin: str) -> tuple[int, bytes]:
    response = await transport.send("up", "GET", origin + "/v1/models", [], b"")
    try:
        return response.status, await response.read()
    finally:
        response.close()


@pytest.mark.parametrize("version", ["1.0", "1.1"])
async def test_close_delimited_body_ends_at_the_close(version: str) -> None:
    """A body without length or chunking is complete at a clean close; nothing is reused."""
    answer = response(200, b"to the end", version=version, length=False)
    async with ScriptedUpstream([[READ, Write(answer), CLOSE], [READ, Write(SECOND)]]) as upstream:
        transport = _transport(upstream.origin)
        assert await _get(transport, upstream.origin) == (200, b"to the end")
        assert not transport._pools["up"]._idle
        assert await _get(transport, upstream.origin) == (200, b"second")
        await transport.aclose()


async def test_bytes_after_a_complete_response_reach_no_response() -> None:
    """A second message behind the first is dropped with its connection; the next call is clean."""
    stray = FIRST + response(200, b"stray", "X-Stray: 1")
    async with ScriptedUpstream([[READ, Write(stray)], [READ, Write(SECOND)]]) as upstream:
        transport = _transport(upstream.origin)
        answer = await transport.send("up", "GET", upstream.origin + "/", [], b"")
        assert await answer.read() == b"first"
        assert answer.headers == [("Content-Length", "5")]
        answer.close()
        assert not transport._pools["up"]._idle
        assert await _get(transport, upstream.origin) == (200, b"second")
        await transport.aclose()


@pytest.mark.parametrize("second", [b"2", b"5"])
async def test_duplicate_content_length_is_malformed(second: bytes) -> None:
    """Two Content-Length fields, equal or not, make the response malformed (502)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: %s\r\n\r\n" % second
    async with ScriptedUpstream([[READ, Write(head + b"okabc")]]) as upstream:
        transport = _transport(upstream.origin)
        with pytest.raises(BadGateway) as malformed:
            await _get(transport, upstream.origin)
        await transport.aclose()
    assert malformed.value.code == "bad_gateway"


@pytest.mark.parametrize(
    "flood",
    [
        [Write(b"HTTP/1.1 200 OK\r\n"), Flood(b"X-Flood: 1\r\n", 200_001), Write(END)],
        [Write(b"HTTP/1.1 200 OK\r\nX-Long: "), Flood(b"a", 16 * 1024 * 1024), Write(END)],
        [Flood(b"HTTP/1.1 100 Continue\r\n\r\n", 400_000), Write(FIRST)],
    ],
    ids=["200001-fields", "16-MiB-field", "endless-100-continue"],
)
async def test_head_flood_is_refused_in_bounded_memory(flood: list[Write | Flood]) -> None:
    """A head past aiohttp's caps is a malformed response, refused before memory grows."""
    async with ScriptedUpstream([[READ, *flood]]) as up:
        transport = _transport(up.origin, read_timeout=5.0)
        tracemalloc.start()
        try:
            with pytest.raises(BadGateway) as malformed:
                await _get(transport, up.origin)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await transport.aclose()
    assert malformed.value.code == "bad_gateway"
    assert peak < 4 * 1024 * 1024


async def test_cancelled_connect_returns_its_slot() -> None:
    """A request cancelled while its connection is being made frees its pool slot."""
    async with ScriptedUpstream([[Pause(5.0)]]) as silent:  # accepts, never answers TLS
        origin = silent.origin.replace("http:", "https:")
        transport = _transport(origin, max_connections=1, connect_timeout=5.0)
        call = asyncio.ensure_future(_get(transport, origin))
        await asyncio.sleep(0.2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert not transport._pools["up"]._slots.locked()
        await transport.aclose()


async def test_ipv6_literal_gets_a_bracketed_host() -> None:
    """An IPv6 literal upstream is named in brackets in Host, on the default port too."""
    origins = ("http://[::1]", "https://[::1]:443", "http://[::1]:8080")
    lines = [_transport(origin)._pools["up"].host_line for origin in origins]
    assert lines == [b"Host: [::1]\r\n"] * 2 + [b"Host: [::1]:8080\r\n"]
    try:
        server = await ScriptedUpstream([[READ, Write(FIRST)]], host="::1", port=80).__aenter__()
    except OSError:
        pytest.skip("the wire check needs [::1]:80 (IPv6 and the right to bind port 80)")
    transport = _transport("http://[::1]")
    try:
        assert await _get(transport, "http://[::1]") == (200, b"first")
    finally:
        await transport.aclose()
        await server.__aexit__(None, None, None)
    assert server.requests[0].split(b"\r\n")[1] == b"Host: [::1]"


async def test_non_utf8_header_bytes_reach_the_caller_intact() -> None:
    """A header value that is not UTF-8 is surrogate-escaped, so its bytes come back exact."""
    raw = b"caf\xe9 \xff\xfe"
    head = b"HTTP/1.1 200 OK\r\nX-Raw: %s\r\nContent-Length: 2\r\n\r\nok" % raw
    async with ScriptedUpstream([[READ, Write(head)]]) as upstream:
        transport = _transport(upstream.origin)
        answer = await transport.send("up", "GET", upstream.origin + "/", [], b"")
        answer.close()
        await transport.aclose()
    name, value = answer.headers[0]
    assert (name, value.encode("utf-8", "surrogateescape")) == ("X-Raw", raw)
