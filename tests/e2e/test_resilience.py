"""Several endpoints per upstream, retries and failover, through a running sidecar.

The backends are aiohttp servers on real sockets in the test's loop, each told what to
answer; the sidecar runs in-process on its own thread, with ``ENDPOINTS`` pointing at
them (one at a port nothing listens on, for connection refused). Clients: aiohttp and
the official ``openai`` SDK with its own retries off, so every recovery seen is the
sidecar's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.conftest import GROQ_PROVIDER_KEY
from tests.support.inprocess import ThreadedSidecar
from tests.support.sidecar import free_port

REPLY = {
    "id": "r",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Backend:
    """One endpoint: answers ``mode`` (``ok``, a status, ``reset-after-chunk``) and counts."""

    port: int
    mode: str = "ok"
    retry_after: str | None = None
    hits: int = 0
    keys: list[str] = field(default_factory=list)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        self.hits += 1
        self.keys.append(request.headers.get("Authorization", ""))
        if self.mode == "reset-after-chunk":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"id":"r","choices":[]}\n\n')
            assert request.transport is not None
            request.transport.abort()
            return response
        if self.mode.isdigit():
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.json_response(
                {"error": {"message": self.mode}}, status=int(self.mode), headers=headers
            )
        return web.json_response(REPLY)


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {name: free_port() for name in ("a", "b", "refused", "fallback")}


@pytest.fixture(scope="module")
def sidecar(
    ports: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ThreadedSidecar, str]]:
    endpoints = [
        {
            "name": "a",
            "base_url": f"http://127.0.0.1:{ports['a']}",
            "api_key": "sk-key-a",
            "weight": 3,
        },
        {"name": "b", "base_url": f"http://127.0.0.1:{ports['b']}", "api_key": "sk-key-b"},
    ]
    workdir: Path = tmp_path_factory.mktemp("resilience")
    process = ThreadedSidecar(
        workdir,
        env={
            "LLM_SIDECAR_UPSTREAMS__OPENAI__ENDPOINTS": json.dumps(endpoints),
            "LLM_SIDECAR_UPSTREAMS__OPENAI__FALLBACK": "groq",
            "LLM_SIDECAR_UPSTREAMS__OPENAI__FALLBACK_MODELS": '{"*": "llama"}',
            "LLM_SIDECAR_UPSTREAMS__GROQ__BASE_URL": f"http://127.0.0.1:{ports['fallback']}",
            "LLM_SIDECAR_UPSTREAMS__GROQ__API_KEY": GROQ_PROVIDER_KEY,
            "LLM_SIDECAR_UPSTREAMS__LONELY__BASE_URL": f"http://127.0.0.1:{ports['a']}",
            "LLM_SIDECAR_UPSTREAMS__DOWN__ENDPOINTS": json.dumps(
                [
                    {"base_url": f"http://127.0.0.1:{ports['refused']}"},
                    {"base_url": f"http://127.0.0.1:{ports['b']}"},
                ]
            ),
            # Its own retry budget: the outage test's window holds no earlier traffic.
            "LLM_SIDECAR_UPSTREAMS__OUTAGE__ENDPOINTS": json.dumps(
                [{"base_url": f"http://127.0.0.1:{ports[name]}"} for name in ("a", "b")]
            ),
            "LLM_SIDECAR_DEFAULT_RPM": "1000000",
            "LLM_SIDECAR_BREAKER_FAILURE_THRESHOLD": "1000",
            "LLM_SIDECAR_UPSTREAM_READ_TIMEOUT_SECONDS": "5",
            "LLM_SIDECAR_RETRY_MAX_BACKOFF_SECONDS": "0.05",
        },
    ).start()
    key = process.create_user("acme", "alice", tpm=1_000_000_000)
    yield process, key
    assert process.stop(), process.logs()


@pytest.fixture
async def backends(ports: dict[str, int]) -> AsyncIterator[dict[str, Backend]]:
    served = {name: Backend(ports[name]) for name in ("a", "b", "fallback")}
    runners = []
    for backend in served.values():
        runner = web.ServerRunner(web.Server(backend.handle))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", backend.port).start()
        runners.append(runner)
    yield served
    for runner in runners:
        await runner.cleanup()


async def _post(
    sidecar: tuple[ThreadedSidecar, str], path: str = "/openai/v1/chat/completions", **body: object
) -> tuple[int, dict[str, str], bytes]:
    process, key = sidecar
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            process.url + path, json={**CHAT, **body}, headers={"Authorization": f"Bearer {key}"}
        ) as response,
    ):
        return response.status, dict(response.headers), await response.read()


def _client(sidecar: tuple[ThreadedSidecar, str], path: str = "/openai/v1") -> openai.AsyncOpenAI:
    """The official SDK with its own retries off: any recovery seen is the sidecar's."""
    process, key = sidecar
    return openai.AsyncOpenAI(base_url=process.url + path, api_key=key, max_retries=0)


async def test_weights_are_honoured_and_each_endpoint_gets_its_key(
    sidecar: tuple[ThreadedSidecar, str], backends: dict[str, Backend]
) -> None:
    """1,000 calls over weights 3:1 land within a few percent of 750/250, each with its key."""
    semaphore = asyncio.Semaphore(8)

    async def one() -> int:
        async with semaphore:
            return (await _post(sidecar))[0]

    statuses = await asyncio.gather(*(one() for _ in range(1000)))
    assert set(statuses) == {200}
    a, b = backends["a"].hits, backends["b"].hits
    assert a + b == 1000
    assert abs(a - 750) <= 40, (a, b)
    assert set(backends["a"].keys) == {"Bearer sk-key-a"}
    assert set(backends["b"].keys) == {"Bearer sk-key-b"}


async def test_a_rate_limited_key_is_skipped_for_its_retry_after_then_used_again(
    sidecar: tuple[ThreadedSidecar, str], backends: dict[str, Backend]
) -> None:
    """a answers 429 (Retry-After 2): the call succeeds on b, b takes all traffic for 2 s,
    then a is back in the rotation."""
    backends["a"].mode, backends["a"].retry_after = "429", "2"
    seen_429 = 0
    for _ in range(20):
        status, headers, _ = await _post(sidecar)
        assert status == 200
        seen_429 += headers.get("x-llm-sidecar-attempts") == "2"
    assert backends["a"].hits == seen_429 == 1  # asked once, then skipped
    backends["a"].mode = "ok"
    await asyncio.sleep(2.1)
    for _ in range(8):
        assert (await _post(sidecar))[0] == 200
    assert backends["a"].hits > 1


async def test_connection_refused_succeeds_on_another_endpoint(
    sidecar: tuple[ThreadedSidecar, str], backends: dict[str, Backend]
) -> None:
    """An endpoint nobody listens on: every call still succeeds, retried ones say so."""
    attempts = set()
    for _ in range(6):
        status, headers, _ = await _post(sidecar, "/down/v1/chat/completions")
        assert status == 200
        attempts.add(headers.get("x-llm-sidecar-attempts"))
    assert "2" in attempts
    async with _client(sidecar, "/down/v1") as client:
        chat = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert chat.choices[0].message.content == "hi"


async def test_all_endpoints_failing_fall_back_to_the_fallback_upstream(
    sidecar: tuple[ThreadedSidecar, str], backends: dict[str, Backend]
) -> None:
    """Both endpoints 503: groq answers with the mapped model; the SDK sees a success."""
    backends["a"].mode = backends["b"].mode = "503"
    status, headers, _ = await _post(sidecar)
    assert status == 200
    assert headers["x-llm-sidecar-upstream"] == "groq"
    assert headers["x-llm-sidecar-attempts"] == "3"
    assert backends["fallback"].hits == 1
    assert backends["fallback"].keys == [f"Bearer {GROQ_PROVIDER_KEY}"]
    async with _client(sidecar) as client:
        chat = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    assert chat.id == "r"


async def test_a_stream_cut_after_its_first_chunk_is_not_retried(
    sidecar: tuple[ThreadedSidecar, str], backends: dict[str, Backend]
) -> None:
    """Once a byte went to the caller, a reset ends the stream: one attempt, no replay."""
    backends["a"].mode = backends["b"].mode = "reset-after-chunk"
    with pytest.raises(aiohttp.ClientPayloadError):
        await _post(sidecar, stream=True)
    assert backends["a"].hits + backends["b"].hits == 1


@pytest.mark.parametrize("status", ["400", "401", "404"])
async def test_client_errors_are_never_retried(
    sidecar: tuple[ThreadedSidecar, str], backends: dict[str, Backend], status: str
) -> None:
    """400, 401 and 404 from the upstream pass through after one attempt."""
    backends["a"].mode = backends["b"].mode = status
    got, headers, _ = await _post(sidecar)
    assert str(got) == status
    assert "x-llm-sidecar-attempts" not in headers
    assert backends["a"].hits + backends["b"].hits == 1


async def test_a_fifty_second_retry_after_is_not_waited_for(
    sidecar: tuple[ThreadedSidecar, str], backends: dict[str, Backend]
) -> None:
    """A lone endpoint's 429 asking for 50 s goes straight back to the caller."""
    backends["a"].mode, backends["a"].retry_after = "429", "50"
    started = asyncio.get_running_loop().time()
    status, headers, _ = await _post(sidecar, "/lonely/v1/chat/completions")
    assert status == 429
    assert headers["Retry-After"] == "50"
    assert asyncio.get_running_loop().time() - started < 1.0
    assert backends["a"].hits == 1


async def test_the_retry_budget_caps_retries_during_a_full_outage(
    sidecar: tuple[ThreadedSidecar, str], backends: dict[str, Backend]
) -> None:
    """Every endpoint 503s: the upstream sees at most the requests plus 20 % of them plus
    the 3/s floor, never three times the requests."""
    for backend in backends.values():
        backend.mode = "503"
    started = asyncio.get_running_loop().time()
    requests = 300
    semaphore = asyncio.Semaphore(10)

    async def one() -> int:
        async with semaphore:
            return (await _post(sidecar, "/outage/v1/chat/completions"))[0]

    statuses = await asyncio.gather(*(one() for _ in range(requests)))
    elapsed = asyncio.get_running_loop().time() - started
    assert set(statuses) == {503}
    received = sum(backend.hits for backend in backends.values())
    retries = received - requests
    floor = 3 * 10 + 3 * elapsed  # the window's floor, and what the elapsed time adds to it
    assert retries <= 0.2 * requests + floor, (retries, elapsed)
    metrics = (await _metrics(sidecar)).splitlines()
    assert any(line.startswith("llm_sidecar_retry_budget_exhausted_total") for line in metrics)


async def _metrics(sidecar: tuple[ThreadedSidecar, str]) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(sidecar[0].admin_url + "/metrics") as response,
    ):
        return await response.text()
