"""An upstream header value that is not UTF-8 reaches the caller byte for byte."""

from __future__ import annotations

import asyncio

from proxy.entrypoints.app import Overrides
from proxy.settings import Settings
from tests.conftest import OPENAI_PROVIDER_KEY
from tests.support.inprocess import serve_in_process, user_repository

RAW_VALUE = b"caf\xe9 \xff\xfe"


async def _raw_upstream(body: bytes, chunked: bool) -> asyncio.Server:
    """Answers every request with a head holding ``X-Raw: caf\\xe9 \\xff\\xfe``."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(body)
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Raw: "
            + RAW_VALUE
            + b"\r\n"
            + framing
            + b"\r\n\r\n"
            + payload
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def _through_sidecar(chunked: bool) -> bytes:
    body = b'{"id": "r"}' * (30_000 if chunked else 1)  # chunked: past the whole-body limit
    server = await _raw_upstream(body, chunked)
    port = server.sockets[0].getsockname()[1]
    repository, key = await user_repository()
    settings = Settings(
        upstreams={
            "openai": {"base_url": f"http://127.0.0.1:{port}", "api_key": OPENAI_PROVIDER_KEY}
        },
        database_url="sqlite:///unused.db",
    )
    try:
        async with serve_in_process(settings, Overrides(repository=repository), key) as sidecar:
            host, _, sidecar_port = sidecar.url.removeprefix("http://").partition(":")
            reader, writer = await asyncio.open_connection(host, int(sidecar_port))
            writer.write(
                b"GET /openai/v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Authorization: Bearer " + key.encode() + b"\r\n\r\n"
            )
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return answer
    finally:
        server.close()
        await server.wait_closed()


async def test_a_non_utf8_header_byte_reaches_the_caller_intact() -> None:
    """Whole and streamed answers both carry the upstream's bytes, not a truncated value."""
    for chunked in (False, True):
        answer = await _through_sidecar(chunked)
        head = answer.partition(b"\r\n\r\n")[0]
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
        assert b"\r\nX-Raw: " + RAW_VALUE + b"\r\n" in head, head
        assert b"X-Correlation-ID: " in head
