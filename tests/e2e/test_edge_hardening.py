"""The traffic listener's edge, over raw sockets: limits, framing, slow clients, no SSRF.

The sidecar runs in-process (``ThreadedSidecar``): its edge is the one a process serves.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import orjson
import pytest

from tests.e2e.conftest import start_in_process
from tests.support import leak_scan
from tests.support.fake_upstream import FakeUpstream
from tests.support.inprocess import ThreadedSidecar

CLIENT_TIMEOUT_SECONDS = 1.0
MAX_BODY_BYTES = 64 * 1024
PATH = "/openai/v1/chat/completions"


@pytest.fixture(scope="module")
def evil() -> Iterator[FakeUpstream]:
    """A second origin that no input may make the sidecar call."""
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def sidecar(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ThreadedSidecar, str]]:
    process, key = start_in_process(
        tmp_path_factory.mktemp("edge"),
        fake_upstream,
        LLM_SIDECAR_CLIENT_TIMEOUT_SECONDS=str(CLIENT_TIMEOUT_SECONDS),
        LLM_SIDECAR_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
    )
    yield process, key
    assert process.stop(), process.logs()


async def _exchange(port: int, *parts: bytes, pause: float = 0.0) -> tuple[int | None, bytes]:
    """Send ``parts`` (``pause`` s apart) on a fresh connection; (status, response) or
    (None, b"") if the sidecar closed the connection without answering."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        async with asyncio.timeout(CLIENT_TIMEOUT_SECONDS + 5):
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            body = await reader.readexactly(int(length[1])) if length else b""
    except (ConnectionError, asyncio.IncompleteReadError):
        return None, b""
    finally:
        writer.close()
    leak_scan.add_output("edge answer", head + body)
    return int(head.split(b" ", 2)[1]), head + body


def _head(key: str, *extra: str, length: int | None = None, target: str = PATH) -> bytes:
    lines = [
        f"POST {target} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {key}",
        "Content-Type: application/json",
        "Connection: close",
        *extra,
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chat(**fields: object) -> bytes:
    return orjson.dumps({"model": "gpt-test", "messages": [], **fields})


@pytest.mark.parametrize(
    ("case", "extra"),
    [
        ("200 headers", [f"X-Filler-{i}: x" for i in range(200)]),
        ("one 10 KiB header", ["X-Big: " + "a" * 10_240]),
        ("Content-Length and Transfer-Encoding", ["Transfer-Encoding: chunked"]),
        ("two different Content-Lengths", ["Content-Length: 3"]),
        ("a bare CR inside a value", ["X-Split: one\rX-Injected: two"]),
        ("a NUL inside a value", ["X-Nul: a\x00b"]),
    ],
)
async def test_bad_framing_is_400_and_never_reaches_upstream(
    case: str, extra: list[str], sidecar: tuple[ThreadedSidecar, str], upstream: FakeUpstream
) -> None:
    """Header floods, oversize fields, smuggling-shaped framing and raw CR/NUL: an OpenAI 400."""
    process, key = sidecar
    body = _chat()
    status, reply = await _exchange(process.port, _head(key, *extra, length=len(body)) + body)
    assert status == 400, (case, reply[:200])
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"\r\nX-Correlation-ID: " in head
    assert orjson.loads(body)["error"]["code"] == "malformed_http", "OpenAI's shape, even here"
    assert not upstream.received, case
    assert key.encode() not in reply


async def test_trickled_head_is_cut_off(sidecar: tuple[ThreadedSidecar, str]) -> None:
    """A client sending its head a byte at a time is disconnected after the client timeout."""
    process, key = sidecar
    head = _head(key, length=2)
    started = time.monotonic()
    status, _ = await _exchange(process.port, *(head[i : i + 1] for i in range(40)), pause=0.1)
    assert status is None, "no request was ever complete"
    assert time.monotonic() - started < 40 * 0.1 + 0.5
    assert time.monotonic() - started >= CLIENT_TIMEOUT_SECONDS - 0.1


async def test_stalled_body_is_408(
    sidecar: tuple[ThreadedSidecar, str], upstream: FakeUpstream
) -> None:
    """A body that stops arriving gets an OpenAI-shaped 408 after the client timeout."""
    process, key = sidecar
    body = _chat()
    started = time.monotonic()
    status, reply = await _exchange(process.port, _head(key, length=len(body) + 100) + body)
    elapsed = time.monotonic() - started
    assert status == 408
    assert orjson.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert CLIENT_TIMEOUT_SECONDS - 0.1 <= elapsed < CLIENT_TIMEOUT_SECONDS + 1.5
    assert not upstream.received


async def test_chunked_body_is_capped_while_it_streams_in(
    sidecar: tuple[ThreadedSidecar, str], upstream: FakeUpstream
) -> None:
    """A chunked body (no length up front) is cut off with 413 once past the cap."""
    process, key = sidecar
    chunk = b"a" * 16_384
    frames = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY_BYTES // 16_384 + 2)]
    status, _ = await _exchange(
        process.port, _head(key, "Transfer-Encoding: chunked"), *frames, b"0\r\n\r\n"
    )
    assert status == 413
    assert not upstream.received


@pytest.mark.parametrize(
    ("case", "target", "extra", "body_fields"),
    [
        ("Host header", PATH, ["X-Host: {evil}"], {}),
        ("X-Forwarded-*", PATH, ["X-Forwarded-Host: {evil}", "Forwarded: host={evil}"], {}),
        ("absolute-form target", "http://{evil}" + PATH, [], {}),
        ("userinfo-looking path", "/openai/@{evil}/v1/chat/completions", [], {}),
        ("double-slash path", "/openai//{evil}/v1/chat/completions", [], {}),
        ("api_base in the body", PATH, [], {"api_base": "http://{evil}", "base_url": "{evil}"}),
    ],
)
async def test_no_input_changes_the_origin_called(
    case: str,
    target: str,
    extra: list[str],
    body_fields: dict[str, str],
    sidecar: tuple[ThreadedSidecar, str],
    upstream: FakeUpstream,
    evil: FakeUpstream,
) -> None:
    """Host, X-Forwarded-*, absolute targets, odd paths and api_base never reach another origin."""
    process, key = sidecar
    where = f"127.0.0.1:{evil.port}"
    fields = {name: value.format(evil=where) for name, value in body_fields.items()}
    body = _chat(**fields)
    head = _head(
        key,
        *(line.format(evil=where) for line in extra),
        length=len(body),
        target=target.format(evil=where),
    )
    if case == "Host header":
        head = head.replace(b"Host: 127.0.0.1", f"Host: {where}".encode())
    status, _ = await _exchange(process.port, head + body)
    assert not evil.received, case
    assert status is not None
    assert status < 500, case
    for received in upstream.received:
        assert received.headers["host"] == f"127.0.0.1:{upstream.port}"


async def test_expect_100_continue_is_answered_and_not_forwarded(
    sidecar: tuple[ThreadedSidecar, str], upstream: FakeUpstream
) -> None:
    """A client asking before its body (curl does) hears 100 at once; upstream sees no Expect."""
    process, key = sidecar
    body = _chat()
    reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
    try:
        writer.write(_head(key, "Expect: 100-continue", length=len(body)))
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert "expect" not in upstream.received[0].headers


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /openai/v1/realtime HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n",
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        b"GET /openai/v1/models\nX-Injected: 1\r\nHost: x\r\n\r\n",  # HTTP/0.9-shaped
    ],
    ids=["websocket upgrade", "CONNECT", "no HTTP version"],
)
async def test_unsupported_protocols_are_refused_at_once(
    request_head: bytes, sidecar: tuple[ThreadedSidecar, str], upstream: FakeUpstream
) -> None:
    """Upgrades, CONNECT and version-less request lines get an immediate 400, not a hang."""
    process, _ = sidecar
    started = time.monotonic()
    status, reply = await _exchange(process.port, request_head)
    assert time.monotonic() - started < 0.5
    assert status == 400, reply
    assert b'"code":"unsupported_protocol"' in reply
    assert not upstream.received
