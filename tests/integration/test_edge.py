"""The traffic listener's edge and its proxy handler, served by pytest-aiohttp in the test's loop.

``aiohttp_client`` serves ``traffic_runner`` (the edge exactly as the sidecar builds it)
around a stub handler, to find its parsing limits to the byte and its answer to a
handler that crashes; ``aiohttp_raw_server`` serves the assembled proxy handler alone,
for its answer to an unexpected error in the core. No upstream, no ops listener, no
sidecar: what these cover, the e2e tests cannot provoke.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient, AiohttpRawServer
from structlog.testing import capture_logs

from proxy.core.exchange import Exchange
from proxy.core.ports import NoTracer
from proxy.entrypoints.answers import make_rejection
from proxy.entrypoints.app import Overrides, create_app
from proxy.entrypoints.edge import (
    MAX_HEADER_FIELD_BYTES,
    MAX_REQUEST_HEADERS,
    MAX_REQUEST_LINE_BYTES,
    ProxyHandler,
    Rejection,
    traffic_runner,
)
from proxy.settings import Settings
from tests.support import leak_scan
from tests.support.inprocess import user_repository

CLIENT_TIMEOUT_SECONDS = 0.3
SECRET = "sk-edge-test-0123456789SECRET"
leak_scan.add_secret(SECRET)


class EdgeTestServer(BaseTestServer):
    """``traffic_runner`` as a pytest-aiohttp test server (``aiohttp_client(server)``)."""

    def __init__(self, handler: ProxyHandler, reject: Rejection, settings: Settings) -> None:
        super().__init__()
        self._handler, self._reject, self._settings = handler, reject, settings

    async def _make_runner(self, **_kwargs: Any) -> web.BaseRunner:
        return traffic_runner(self._handler, self._reject, self._settings)  # the sidecar's own


class Recorder:
    """Observer of the edge's own answers, and the requests that reached the handler."""

    def __init__(self) -> None:
        self.finished: list[Exchange] = []
        self.handled: list[str] = []

    def upstream_started(self, exchange: Exchange) -> None:
        raise AssertionError("no upstream here")

    first_byte = upstream_started

    def request_finished(self, exchange: Exchange) -> None:
        self.finished.append(exchange)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.handled.append(request.raw_path)
        return web.Response(text="served")


Edge = tuple[Recorder, int]


@pytest.fixture
async def edge(aiohttp_client: AiohttpClient) -> Edge:
    """The edge around a handler that answers 200; (its recorder, its port)."""
    recorder = Recorder()
    settings = Settings(
        database_url="sqlite:///unused.db", client_timeout_seconds=CLIENT_TIMEOUT_SECONDS
    )
    server = EdgeTestServer(recorder.handle, make_rejection(recorder, _clock), settings)
    client: TestClient[web.BaseRequest, None] = await aiohttp_client(server)
    assert client.port is not None
    return recorder, client.port


def _clock() -> float:
    return 0.0


async def _exchange(port: int, request: bytes) -> tuple[int, bytes, bytes]:
    """(status, head, body) of the one answer to ``request`` on a fresh connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            body = await reader.readexactly(int(length[1])) if length else b""
    finally:
        writer.close()
    leak_scan.add_output("edge test answer", head + body)
    return int(head.split(b" ", 2)[1]), head, body


def _get(target: str = "/openai/v1/models", headers: tuple[str, ...] = ()) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: x", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


_BASE_HEADERS = 2  # Host and Connection, as _get sends them
_VALUE = "X-Big: "
_PAD = "/openai/v1/models?key=" + SECRET + "&pad="

LIMITS: dict[str, Callable[[int], bytes]] = {
    "header count": lambda n: _get(headers=tuple(f"X-{i}: v" for i in range(n - _BASE_HEADERS))),
    "header value": lambda n: _get(headers=(f"{_VALUE}{'a' * n}",)),
    "request target": lambda n: _get(target=_PAD + "a" * (n - len(_PAD))),
}
SIZES = {
    "header count": MAX_REQUEST_HEADERS,
    "header value": MAX_HEADER_FIELD_BYTES,
    "request target": MAX_REQUEST_LINE_BYTES,
}


@pytest.mark.parametrize("limit", sorted(LIMITS))
async def test_each_parsing_limit_serves_at_it_and_refuses_past_it(edge: Edge, limit: str) -> None:
    """At its documented cap a request is served; one more is the edge's OpenAI 400,
    the handler never sees it, and a key in what was refused is not echoed."""
    recorder, port = edge
    size = SIZES[limit]
    status, _, body = await _exchange(port, LIMITS[limit](size))
    assert (status, body) == (200, b"served"), limit
    assert len(recorder.handled) == 1

    status, head, body = await _exchange(port, LIMITS[limit](size + 1))
    assert status == 400, (limit, head)
    error = orjson.loads(body)["error"]
    assert (error["code"], error["type"]) == ("malformed_http", "invalid_request_error")
    assert re.search(rb"\r\nX-Correlation-ID: [0-9a-f]{32}\r\n", head)
    assert SECRET.encode() not in head + body
    assert len(recorder.handled) == 1, "refused before the handler"
    assert [e.status for e in recorder.finished] == [400], "the refusal has its access line"


async def test_an_idle_keep_alive_connection_is_closed_after_the_client_timeout(
    edge: Edge,
) -> None:
    """A kept-alive connection that sends nothing more is closed after the client timeout."""
    _, port = edge
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /openai/v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Connection: close" not in head
        await reader.readexactly(len(b"served"))
        answered = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 5) == b"", "closed, nothing more sent"
        idle = asyncio.get_running_loop().time() - answered
    finally:
        writer.close()
    assert CLIENT_TIMEOUT_SECONDS - 0.05 <= idle < CLIENT_TIMEOUT_SECONDS + 1.0, idle


async def test_a_crashing_handler_is_an_openai_500_and_one_logged_traceback(
    aiohttp_client: AiohttpClient,
) -> None:
    """What escapes the handler is the edge's 500 in OpenAI's shape, on a closed
    connection, with an access line and the traceback logged once."""
    recorder = Recorder()

    async def crash(request: web.BaseRequest) -> web.StreamResponse:
        raise RuntimeError(f"a bug holding {SECRET}")

    server = EdgeTestServer(crash, make_rejection(recorder, _clock), Settings())
    client: TestClient[web.BaseRequest, None] = await aiohttp_client(server)
    with capture_logs() as logs:
        async with client.post("/openai/v1/chat/completions", data=b"{}") as response:
            body = await response.read()
    assert response.status == 500
    assert response.headers["Connection"] == "close"
    assert orjson.loads(body) == {
        "error": {
            "message": "The sidecar failed to handle the request.",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    assert SECRET.encode() not in body
    (finished,) = recorder.finished
    assert (finished.status, response.headers["X-Correlation-ID"]) == (500, finished.correlation_id)
    (logged,) = [
        line for line in logs if line["event"] == "unhandled error outside the proxy route"
    ]
    assert isinstance(logged["exc_info"], RuntimeError)


class CrashingAuthenticator:
    async def authenticate(self, authorization: str | None) -> Any:
        raise RuntimeError("a bug in the core")


async def _served(
    aiohttp_raw_server: AiohttpRawServer, aiohttp_client: AiohttpClient, handler: ProxyHandler
) -> Callable[[str], Awaitable[tuple[int, dict[str, str], bytes]]]:
    server = await aiohttp_raw_server(handler)
    client: TestClient[web.BaseRequest, None] = await aiohttp_client(server)

    async def post(correlation_id: str) -> tuple[int, dict[str, str], bytes]:
        async with client.post(
            "/openai/v1/chat/completions",
            data=b'{"model": "m", "messages": []}',
            headers={"Content-Type": "application/json", "X-Correlation-ID": correlation_id},
        ) as response:
            return response.status, dict(response.headers), await response.read()

    return post


def _requests_total(text: bytes, code: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.name == "llm_sidecar_requests_total" and sample.labels.get("code") == code
    )


async def test_an_unexpected_error_in_the_proxy_route_is_a_500_that_frees_its_slot(
    aiohttp_raw_server: AiohttpRawServer, aiohttp_client: AiohttpClient
) -> None:
    """A bug below the handler is a 500 in OpenAI's shape with the caller's correlation id,
    counted, logged and traced as one; its in-flight slot is freed (MAX_INFLIGHT=1)."""
    repository, _ = await user_repository()
    settings = Settings(database_url="sqlite:///unused.db", max_inflight=1)
    sidecar = create_app(
        settings,
        overrides=Overrides(
            repository=repository, authenticator=CrashingAuthenticator(), tracer=NoTracer()
        ),
    )
    await sidecar.opening()
    try:
        post = await _served(aiohttp_raw_server, aiohttp_client, sidecar.handler)
        with capture_logs() as logs:
            answers = [await post(f"order-{n}") for n in (1, 2)]
    finally:
        await sidecar.closing()
    for n, (status, headers, body) in enumerate(answers, start=1):
        assert status == 500, body  # not 503 overloaded: the first one's slot came back
        assert headers["X-Correlation-ID"] == f"order-{n}"
        error = orjson.loads(body)["error"]
        assert (error["code"], error["param"]) == ("internal_error", None)
        assert "a bug in the core" not in error["message"]
    assert sidecar.service.inflight == 0
    crashes = [line for line in logs if line["event"] == "unhandled error in proxy route"]
    assert len(crashes) == 2
    assert all(line.get("exc_info") for line in crashes)
    access = [line for line in logs if line["event"] == "request"]
    assert [line["status"] for line in access] == [500, 500]
    assert _requests_total(generate_latest(sidecar.registry), "500") == 2
