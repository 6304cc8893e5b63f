"""Load shedding: over MAX_INFLIGHT an immediate 503, a full pool a bounded wait, ops unaffected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.e2e.conftest import start_in_process
from tests.support.fake_upstream import FakeUpstream
from tests.support.inprocess import ThreadedSidecar
from tests.support.metrics import breaker_state, scrape
from tests.support.sidecar import http_status

MAX_INFLIGHT = 4
MAX_CONNECTIONS = 2
POOL_TIMEOUT_SECONDS = 1.0


@pytest.fixture
def sidecar(upstream: FakeUpstream, tmp_path: Path) -> Iterator[tuple[ThreadedSidecar, str]]:
    process, key = start_in_process(
        tmp_path,
        upstream,
        LLM_SIDECAR_MAX_INFLIGHT=str(MAX_INFLIGHT),
        LLM_SIDECAR_UPSTREAM_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        LLM_SIDECAR_UPSTREAM_POOL_TIMEOUT_SECONDS=str(POOL_TIMEOUT_SECONDS),
        LLM_SIDECAR_UPSTREAM_READ_TIMEOUT_SECONDS="4",
    )
    yield process, key
    assert process.stop(), process.logs()


async def _call(
    url: str, key: str, model: str
) -> tuple[int, dict[str, str], dict[str, str], float]:
    """(status, headers, error object or {}, seconds) of one chat completion."""
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + "/openai/v1/chat/completions",
            data=orjson.dumps({"model": model, "messages": []}),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        ) as response,
    ):
        body = await response.read()
        error = orjson.loads(body).get("error") or {} if response.status >= 400 else {}
        return response.status, dict(response.headers), error, time.monotonic() - started


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)


async def test_overload_and_pool_exhaustion_shed_without_hanging(
    sidecar: tuple[ThreadedSidecar, str], upstream: FakeUpstream
) -> None:
    """Two hung upstream calls fill the pool, two more wait for it, the fifth is shed at once."""
    process, key = sidecar
    hung = [asyncio.ensure_future(_call(process.url, key, "hang")) for _ in range(MAX_CONNECTIONS)]
    await _until(lambda: len(upstream.received) == MAX_CONNECTIONS)
    waiting = [asyncio.ensure_future(_call(process.url, key, "gpt-test")) for _ in range(2)]
    await asyncio.sleep(0.2)

    status, headers, error, seconds = await _call(process.url, key, "gpt-test")
    assert (status, error["code"]) == (503, "overloaded")
    assert headers["Retry-After"] == "1"
    assert seconds < 0.5, "over MAX_INFLIGHT is refused at once"
    for route in ("/healthz", "/readyz", "/metrics"):
        started = time.monotonic()
        assert await asyncio.to_thread(http_status, process.admin_url + route) == 200
        assert time.monotonic() - started < 0.5, f"{route} stays responsive"

    for status, headers, error, seconds in await asyncio.gather(*waiting):
        assert (status, error["code"]) == (503, "upstream_pool_exhausted")
        assert headers["Retry-After"] == "1"
        assert POOL_TIMEOUT_SECONDS - 0.3 < seconds < POOL_TIMEOUT_SECONDS + 1.0
    assert breaker_state(scrape(process.admin_url), "openai") == "closed", "local, not upstream"
    assert len(upstream.received) == MAX_CONNECTIONS, "shed requests never reached the upstream"

    for status, *_ in await asyncio.gather(*hung):
        assert status == 504
    status, *_ = await _call(process.url, key, "gpt-test")
    assert status == 200
