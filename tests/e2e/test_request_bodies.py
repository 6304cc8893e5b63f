"""Request bodies through a running sidecar: as received upstream, decoded only to be read.

The upstream here records the raw bytes of every body (aiohttp's decompression off), so
"byte for byte" means byte for byte, ``Content-Encoding`` included.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
import zstandard
from aiohttp import web

from bench.procs import peak_rss_kib
from tests.conftest import sidecar_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.sidecar import SidecarProcess, free_port

MAX_BODY_BYTES = 2 * 1024 * 1024
CHAT = "/openai/v1/chat/completions"
REQUEST = {"model": "m", "messages": [{"role": "user", "content": "hello " * 50}]}
REPLY = {"id": "r", "model": "m", "usage": {"prompt_tokens": 5, "completion_tokens": 7}}
SSE = b'data: {"id":"r","choices":[]}\n\ndata: [DONE]\n\n'
ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


@dataclass
class Seen:
    path: str
    content_encoding: str | None
    body: bytes


@dataclass
class RecordingUpstream:
    """Answers every request (JSON, or SSE when the body asks for a stream) and keeps its bytes."""

    port: int
    seen: list[Seen] = field(default_factory=list)
    delay: float = 0.0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.content.read()  # unbounded, unlike read(): big bodies are tested
        self.seen.append(Seen(request.path, request.headers.get("Content-Encoding"), body))
        await asyncio.sleep(self.delay)
        if request.path.endswith("/bomb"):  # ~250 KiB of gzip that inflates to 256 MiB
            return web.Response(
                body=BOMB, headers={"Content-Encoding": "gzip"}, content_type="application/json"
            )
        if b'"stream":true' in body.replace(b" ", b"") or b'name="stream"' in body:
            return web.Response(body=SSE, content_type="text/event-stream")
        return web.json_response(REPLY)


def _gzip_of_zeros(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(size >> 20)]
    return b"".join(parts) + packer.flush()


BOMB = _gzip_of_zeros(256 << 20)


@pytest.fixture(scope="module")
def upstream_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def sidecar(
    upstream_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SidecarProcess, str]]:
    workdir: Path = tmp_path_factory.mktemp("bodies")
    fake = FakeUpstream(port=upstream_port)  # only its URL: the recording server listens there
    process = SidecarProcess(
        workdir,
        env=sidecar_env(
            fake, LLM_SIDECAR_DEFAULT_RPM="100000", LLM_SIDECAR_MAX_BODY_BYTES=str(MAX_BODY_BYTES)
        ),
    )
    workdir.mkdir(parents=True, exist_ok=True)
    key = process.create_user("acme", "alice", "--tpm", "100000000")
    process.start()
    yield process, key
    assert process.stop() == 0, process.logs()


@pytest.fixture
async def upstream(upstream_port: int) -> AsyncIterator[RecordingUpstream]:
    recorder = RecordingUpstream(upstream_port)
    runner = web.ServerRunner(web.Server(recorder.handle, auto_decompress=False))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
    yield recorder
    await runner.cleanup()


async def _post(
    sidecar: tuple[SidecarProcess, str],
    body: bytes,
    encoding: str | None,
    path: str = CHAT,
    content_type: str = "application/json",
) -> tuple[int, dict[str, object]]:
    """POST ``body`` as it is (never re-encoded); the status and the JSON answer, if any."""
    process, key = sidecar
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(process.url + path, data=io.BytesIO(body), headers=headers) as response,
    ):
        raw = await response.read()
        return response.status, orjson.loads(raw) if raw.startswith(b"{") else {}


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
async def test_compressed_json_reaches_the_upstream_byte_for_byte(
    sidecar: tuple[SidecarProcess, str], upstream: RecordingUpstream, encoding: str
) -> None:
    """gzip, deflate and zstd JSON bodies arrive exactly as sent, encoding header and all."""
    body = ENCODERS[encoding](orjson.dumps(REQUEST))
    status, reply = await _post(sidecar, body, encoding)
    assert (status, reply) == (200, REPLY)
    (seen,) = upstream.seen
    assert (seen.body, seen.content_encoding) == (body, encoding)


async def test_a_rewritten_compressed_body_goes_as_plain_json(
    sidecar: tuple[SidecarProcess, str], upstream: RecordingUpstream
) -> None:
    """A gzip chat stream that gains include_usage is sent decoded, without Content-Encoding."""
    request = {**REQUEST, "stream": True}
    status, _ = await _post(sidecar, gzip.compress(orjson.dumps(request)), "gzip")
    assert status == 200
    (seen,) = upstream.seen
    assert seen.content_encoding is None
    assert orjson.loads(seen.body) == {**request, "stream_options": {"include_usage": True}}


async def _raw_post(port: int, key: str, encoding: str, body: bytes, pause: float) -> bytes:
    """POST over a raw socket, the body ``pause`` s after the head; the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Encoding: {encoding}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer.write(head if pause else head + body)
    if pause:
        await writer.drain()
        await asyncio.sleep(pause)
        writer.write(body)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
@pytest.mark.parametrize("pause", [0.0, 0.3], ids=["early", "late"])
async def test_lying_encodings_get_400_whenever_the_body_arrives(
    sidecar: tuple[SidecarProcess, str], upstream: RecordingUpstream, encoding: str, pause: float
) -> None:
    """A plain body that claims a coding, with the head or after it, is a 400 in OpenAI's shape."""
    process, key = sidecar
    answer = await _raw_post(process.port, key, encoding, orjson.dumps(REQUEST), pause)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    error = orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "invalid_content_encoding"
    assert upstream.seen == []
    assert "unhandled" not in process.logs()


def _vm_hwm_kib(pid: int) -> int:
    peak = peak_rss_kib(pid)
    assert peak > 0, f"no VmHWM for pid {pid}: the sidecar is gone"  # 0 would hide growth
    return peak


async def test_a_decompression_bomb_is_413_and_costs_no_memory(
    sidecar: tuple[SidecarProcess, str], upstream: RecordingUpstream
) -> None:
    """1 GiB of zeros in 1 MiB of gzip is refused (413) with the peak RSS barely moving."""
    process, _ = sidecar
    assert process.process is not None
    bomb = _gzip_of_zeros(1 << 30)
    assert len(bomb) < MAX_BODY_BYTES
    before = _vm_hwm_kib(process.process.pid)
    status, reply = await _post(sidecar, bomb, "gzip")
    grown_mib = (_vm_hwm_kib(process.process.pid) - before) / 1024
    assert status == 413
    assert reply["error"]["code"] == "request_too_large"  # type: ignore[index]
    # The raw MiB and at most MAX_BODY_BYTES decoded, never the GiB.
    assert grown_mib < 12, grown_mib
    assert upstream.seen == []


async def test_a_compressed_reply_is_decoded_within_a_bound(
    sidecar: tuple[SidecarProcess, str], upstream: RecordingUpstream
) -> None:
    """A small gzip JSON reply inflating to 256 MiB reaches the caller whole; RSS barely moves."""
    process, key = sidecar
    assert process.process is not None
    assert len(BOMB) < 256 * 1024  # small enough to be read whole for its usage
    before = _vm_hwm_kib(process.process.pid)
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(
            process.url + "/openai/v1/bomb",
            json=REQUEST,
            headers={"Authorization": f"Bearer {key}"},
        ) as response,
    ):
        assert response.status == 200
        assert await response.read() == BOMB
    # The usage is read after the reply went out: one more answer means that is done.
    assert (await _post(sidecar, orjson.dumps(REQUEST), None))[0] == 200
    grown_mib = (_vm_hwm_kib(process.process.pid) - before) / 1024
    assert grown_mib < 12, grown_mib


async def test_unknown_expectations_get_417(
    sidecar: tuple[SidecarProcess, str], upstream: RecordingUpstream
) -> None:
    """An Expect other than 100-continue is answered 417 and nothing goes upstream."""
    process, key = sidecar
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            process.url + CHAT,
            data=orjson.dumps(REQUEST),
            headers={"Authorization": f"Bearer {key}", "Expect": "teapot"},
        ) as response,
    ):
        assert response.status == 417
        assert (await response.json())["error"]["code"] == "expectation_failed"
    assert upstream.seen == []


# Every streaming endpoint of the OpenAI API: (path, JSON body or multipart form fields).
STREAMING_ENDPOINTS: dict[str, dict[str, object]] = {
    "chat/completions": {"model": "gpt-4o-mini", "messages": [], "stream": True},
    "completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "stream": True},
    "responses": {"model": "gpt-4o-mini", "input": "hi", "stream": True},
    "threads/runs": {"assistant_id": "asst_1", "stream": True},
    "threads/thread_1/runs": {"assistant_id": "asst_1", "stream": True},
    "threads/thread_1/runs/run_1/submit_tool_outputs": {"tool_outputs": [], "stream": True},
    "audio/speech": {
        "model": "gpt-4o-mini-tts",
        "input": "hi",
        "voice": "alloy",
        "stream_format": "sse",
    },
    "images/generations": {"model": "gpt-image-1", "prompt": "a cat", "stream": True},
}
MULTIPART_ENDPOINTS = ("audio/transcriptions", "images/edits")
USAGE_OPTION_ENDPOINTS = frozenset({"chat/completions", "completions"})


async def test_each_streaming_endpoint_gets_only_properties_it_accepts(
    sidecar: tuple[SidecarProcess, str], upstream: RecordingUpstream
) -> None:
    """Only Chat and legacy Completions streams gain include_usage; other bodies go untouched."""
    for endpoint, request in STREAMING_ENDPOINTS.items():
        body = orjson.dumps(request)
        status, _ = await _post(sidecar, body, None, f"/openai/v1/{endpoint}")
        assert status == 200, endpoint
        seen = upstream.seen.pop()
        if endpoint in USAGE_OPTION_ENDPOINTS:
            assert orjson.loads(seen.body) == {**request, "stream_options": {"include_usage": True}}
        else:
            assert seen.body == body, endpoint
    for endpoint in MULTIPART_ENDPOINTS:
        form = aiohttp.FormData()
        form.add_field("model", "gpt-4o-transcribe")
        form.add_field("stream", "true")
        form.add_field("file", b"RIFF....WAVE", filename="a.wav", content_type="audio/wav")
        payload = form()
        process, key = sidecar
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{process.url}/openai/v1/{endpoint}",
                data=payload,
                headers={"Authorization": f"Bearer {key}"},
            ) as response,
        ):
            assert response.status == 200, endpoint
        seen = upstream.seen.pop()
        assert b"stream_options" not in seen.body
        assert b'name="stream"' in seen.body


async def test_body_bytes_in_flight_are_bounded(
    upstream: RecordingUpstream, tmp_path: Path
) -> None:
    """32 concurrent 4 MiB bodies against a 16 MiB budget: the excess gets 503, RSS is bounded."""
    budget, size = 16 << 20, 4 << 20
    fake = FakeUpstream(port=upstream.port)
    process = SidecarProcess(
        tmp_path,
        env=sidecar_env(
            fake,
            LLM_SIDECAR_DEFAULT_RPM="100000",
            LLM_SIDECAR_MAX_BODY_BYTES=str(size),
            LLM_SIDECAR_MAX_BODY_BYTES_IN_FLIGHT=str(budget),
            LLM_SIDECAR_MAX_INFLIGHT="32",
        ),
    )
    key = process.create_user("acme", "alice", "--tpm", "1000000000")
    process.start()
    try:
        assert process.process is not None
        idle_kib = _vm_hwm_kib(process.process.pid)
        upstream.delay = 1.0  # every body is held while the upstream thinks
        filler = "x" * (size - 200)
        body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": filler}]})
        statuses = await asyncio.gather(*(_post((process, key), body, None) for _ in range(32)))
        codes = sorted(status for status, _ in statuses)
        grown_mib = (_vm_hwm_kib(process.process.pid) - idle_kib) / 1024
    finally:
        assert process.stop() == 0, process.logs()
    assert set(codes) == {200, 503}, codes
    assert 4 <= codes.count(200) < 32
    # Each byte held costs a few of RSS (received, parsed, written): 16 MiB held peaked at
    # ~55 MiB here, once 81 MiB on a loaded machine (allocator fragmentation), against
    # ~410 MiB for the same 32 bodies with nothing bounding them.
    assert grown_mib < 6 * budget / (1 << 20), grown_mib


@pytest.mark.parametrize("tail", [b"0\r\nX Bad: 1\r\n\r\n", b"zz\r\n"], ids=["trailer", "size"])
async def test_chunk_framing_broken_after_the_head_is_400_at_once(
    sidecar: tuple[SidecarProcess, str], upstream: RecordingUpstream, tail: bytes
) -> None:
    """A bad trailer or chunk size arriving in a later read is 400, not a 408 much later."""
    process, key = sidecar
    reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
    body = orjson.dumps(REQUEST)
    writer.write(
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )
    for index in range(0, 40, 4):  # small chunks in pieces: the reader wakes on chunk ends
        writer.write(b"4\r\n" + body[index : index + 4] + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
    writer.write(tail)
    started = asyncio.get_running_loop().time()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    assert b'"malformed_body"' in answer
    assert asyncio.get_running_loop().time() - started < 0.5
    assert upstream.seen == []
