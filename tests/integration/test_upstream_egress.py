"""The lean transport through a real forward proxy (tinyproxy): CONNECT tunnels, absolute
form, proxy authentication and the proxy's failures (ADR 0090)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from proxy.adapters.upstream_egress import Egress, ForwardProxy, parse_proxy_url
from proxy.adapters.upstream_http11 import Http11Transport
from proxy.core.errors import BadGateway
from tests.support import leak_scan
from tests.support.sidecar import free_port
from tests.support.tinyproxy import Tinyproxy

USER, PASSWORD = "egress", "Egress-Pass.4711-transport"
leak_scan.add_secret(PASSWORD)
SSE_EVENTS = 5


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(authority: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return str(path)


async def _handler(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if request.path == "/sse":
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(SSE_EVENTS):
            await response.write(f"data: {index}\n\n".encode())
            await asyncio.sleep(0.02)
        await response.write_eof()
        return response
    return web.Response(body=b"origin:" + request.path_qs.encode() + b":" + body)


@asynccontextmanager
async def _origin(tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    runner = web.AppRunner(web.Application(), access_log=None, shutdown_timeout=0.2)
    runner.app.router.add_route("*", "/{tail:.*}", _handler)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    try:
        yield port
    finally:
        await runner.cleanup()


def _server_tls(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def proxy_dir(tmp_path: Path) -> Path:
    return tmp_path / "proxy"


@pytest.fixture
def started() -> Iterator[list[Tinyproxy]]:
    proxies: list[Tinyproxy] = []
    yield proxies
    for proxy in proxies:
        proxy.stop()


def _tinyproxy(started: list[Tinyproxy], workdir: Path, **options: object) -> Tinyproxy:
    proxy = Tinyproxy(workdir, **options).start()  # type: ignore[arg-type]
    started.append(proxy)
    return proxy


def _transport(origin: str, egress: Egress, *, connect_timeout: float = 3.0) -> Http11Transport:
    return Http11Transport(
        {"up": origin},
        connect_timeout=connect_timeout,
        read_timeout=5.0,
        max_connections=4,
        pool_timeout=1.0,
        egress={"up": egress},
    )


async def _call(transport: Http11Transport, url: str, body: bytes = b"") -> tuple[int, bytes]:
    response = await transport.send("up", "POST" if body else "GET", url, [], body)
    try:
        return response.status, await response.read()
    finally:
        response.close()


async def test_https_goes_through_one_kept_alive_connect_tunnel(
    authority: trustme.CA, ca_file: str, proxy_dir: Path, started: list[Tinyproxy]
) -> None:
    """Sequential requests to an HTTPS origin share one CONNECT tunnel, verified by CA_FILE."""
    async with _origin(_server_tls(authority)) as port:
        proxy = _tinyproxy(started, proxy_dir, connect_ports=(port,))
        origin = f"https://localhost:{port}"
        transport = _transport(origin, Egress(parse_proxy_url(proxy.url()), ca_file))
        for index in range(3):
            status, body = await _call(transport, f"{origin}/v1/x?n={index}", b"hi")
            assert (status, body) == (200, f"origin:/v1/x?n={index}:hi".encode())
        await transport.aclose()
    assert proxy.connects() == [f"CONNECT localhost:{port} HTTP/1.1"]


async def test_sse_streams_through_the_tunnel(
    authority: trustme.CA, ca_file: str, proxy_dir: Path, started: list[Tinyproxy]
) -> None:
    """An event stream arrives through the tunnel event by event, in order."""
    async with _origin(_server_tls(authority)) as port:
        proxy = _tinyproxy(started, proxy_dir, connect_ports=(port,))
        origin = f"https://localhost:{port}"
        transport = _transport(origin, Egress(parse_proxy_url(proxy.url()), ca_file))
        response = await transport.send("up", "GET", origin + "/sse", [], b"")
        chunks = [chunk async for chunk in response.iter_chunks()]
        response.close()
        await transport.aclose()
    assert b"".join(chunks) == b"".join(f"data: {i}\n\n".encode() for i in range(SSE_EVENTS))
    assert len(chunks) >= 2
    assert len(proxy.connects()) == 1


async def test_the_origin_certificate_is_verified_inside_the_tunnel(
    authority: trustme.CA, proxy_dir: Path, started: list[Tinyproxy]
) -> None:
    """Without the CA the tunnelled TLS fails as the origin's fault, not the proxy's."""
    async with _origin(_server_tls(authority)) as port:
        proxy = _tinyproxy(started, proxy_dir, connect_ports=(port,))
        origin = f"https://localhost:{port}"
        transport = _transport(origin, Egress(parse_proxy_url(proxy.url())))
        with pytest.raises(BadGateway) as refused:
            await _call(transport, origin + "/")
        await transport.aclose()
    assert refused.value.code == "upstream_unreachable"
    assert len(proxy.connects()) == 1


async def test_proxy_authentication(
    authority: trustme.CA, ca_file: str, proxy_dir: Path, started: list[Tinyproxy]
) -> None:
    """The right (percent-encoded) password opens the tunnel; a wrong one is egress_proxy_error."""
    async with _origin(_server_tls(authority)) as port:
        proxy = _tinyproxy(started, proxy_dir, connect_ports=(port,), credentials=(USER, PASSWORD))
        origin = f"https://localhost:{port}"
        encoded = PASSWORD.replace("-", "%2D")
        good = parse_proxy_url(proxy.url(userinfo=f"{USER}:{encoded}"))
        transport = _transport(origin, Egress(good, ca_file))
        assert await _call(transport, origin + "/ok") == (200, b"origin:/ok:")
        await transport.aclose()
        wrong = parse_proxy_url(proxy.url(userinfo=f"{USER}:not-{PASSWORD}"))
        transport = _transport(origin, Egress(wrong, ca_file))
        with pytest.raises(BadGateway) as refused:
            await _call(transport, origin + "/no")
        await transport.aclose()
    error = refused.value
    assert (error.code, error.status, error.sent, error.outcome) == (
        "egress_proxy_error",
        502,
        False,
        "unreachable",
    )
    assert "refused its credentials" in str(error)
    assert PASSWORD not in str(error)
    assert PASSWORD not in repr(good)


@pytest.mark.parametrize("with_auth", [False, True])
async def test_http_origin_uses_absolute_form(
    with_auth: bool, proxy_dir: Path, started: list[Tinyproxy]
) -> None:
    """An http origin is asked for in absolute form, with Proxy-Authorization when set."""
    credentials = (USER, PASSWORD) if with_auth else None
    async with _origin() as port:
        proxy = _tinyproxy(started, proxy_dir, credentials=credentials)
        userinfo = f"{USER}:{PASSWORD}" if with_auth else None
        origin = f"http://127.0.0.1:{port}"
        transport = _transport(origin, Egress(parse_proxy_url(proxy.url(userinfo=userinfo))))
        assert await _call(transport, origin + "/a?q=1", b"x") == (200, b"origin:/a?q=1:x")
        assert await _call(transport, origin) == (200, b"origin:/:")
        await transport.aclose()
        if with_auth:  # the proxy's 407 to an absolute-form request is its own failure too
            # (Without credentials: tinyproxy answers a wrong password with 401, which in
            # absolute form cannot be told from the origin's own 401, so it passes through.)
            transport = _transport(origin, Egress(parse_proxy_url(proxy.url())))
            with pytest.raises(BadGateway) as refused:
                await _call(transport, origin + "/b")
            await transport.aclose()
            assert refused.value.code == "egress_proxy_error"
    requests = proxy.requests()
    assert requests[:2] == [
        f"POST http://127.0.0.1:{port}/a?q=1 HTTP/1.1",
        f"GET http://127.0.0.1:{port}/ HTTP/1.1",
    ]


async def test_connect_refused_by_the_proxy(proxy_dir: Path, started: list[Tinyproxy]) -> None:
    """A CONNECT the proxy answers with 403 (a port it does not allow) is egress_proxy_error."""
    proxy = _tinyproxy(started, proxy_dir, connect_ports=(1,))
    origin = f"https://localhost:{free_port()}"
    transport = _transport(origin, Egress(parse_proxy_url(proxy.url())))
    with pytest.raises(BadGateway) as refused:
        await _call(transport, origin + "/")
    await transport.aclose()
    assert refused.value.code == "egress_proxy_error"
    assert "403" in str(refused.value)


async def test_unreachable_proxy() -> None:
    """Nothing listening at the proxy's address: egress_proxy_error, nothing sent."""
    for origin in (f"https://localhost:{free_port()}", f"http://127.0.0.1:{free_port()}"):
        transport = _transport(origin, Egress(ForwardProxy("127.0.0.1", free_port())))
        with pytest.raises(BadGateway) as refused:
            await _call(transport, origin + "/")
        await transport.aclose()
        assert (refused.value.code, refused.value.sent) == ("egress_proxy_error", False)


async def test_silent_proxy_times_out_and_cancelling_frees_the_slot() -> None:
    """A proxy that never answers CONNECT: egress_proxy_error in time; a cancel frees the slot."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        proxy = ForwardProxy("127.0.0.1", silent.getsockname()[1])
        origin = "https://localhost:443"
        transport = _transport(origin, Egress(proxy), connect_timeout=0.3)
        with pytest.raises(BadGateway) as timed_out:
            await _call(transport, origin + "/")
        assert timed_out.value.code == "egress_proxy_error"
        assert "in time" in str(timed_out.value)
        one = Http11Transport(
            {"up": origin},
            connect_timeout=30,
            read_timeout=5,
            max_connections=1,
            pool_timeout=0.2,
            egress={"up": Egress(proxy)},
        )
        task = asyncio.create_task(_call(one, origin + "/"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not one._pools["up"]._slots.locked()
        await transport.aclose()
        await one.aclose()
