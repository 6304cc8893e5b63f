"""1,000 streams with random client disconnects leave no token reservation behind."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from proxy.core.limiter import InProcessRateLimiter
from proxy.entrypoints.app import SERVICE, Overrides
from proxy.settings import Settings
from tests.support.fake_upstream import FakeUpstream
from tests.support.inprocess import serve_in_process, user_repository

TPM = 1_000_000_000
USAGE_TOKENS = 17  # what the fake upstream reports per completed stream
MAX_TOKENS = 100_000  # a leaked reservation would stand out by this much


class FrozenClock:
    """Time that never moves: no refill can hide a leak."""

    def __call__(self) -> float:
        return 1000.0


@pytest.fixture
def fast_upstream(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    upstream.chunk_delay = 0.002
    yield upstream
    upstream.chunk_delay = 0.2


async def _one(session: aiohttp.ClientSession, url: str, key: str, mode: int) -> None:
    body = orjson.dumps(
        {
            "model": "gpt-test",
            "stream": True,
            "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": "count to six"}],
        }
    )
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    request = session.post(url, data=body, headers=headers)
    if mode == 0:  # go away before the response head
        task = asyncio.ensure_future(request.__aenter__())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return
    async with request as response:
        assert response.status == 200
        if mode == 1:  # read one chunk, then hang up
            await response.content.readany()
            response.close()
        elif mode == 2:  # hang up right after the head
            response.close()
        else:  # read to the end
            await response.read()


async def test_random_disconnects_leak_no_reservation(fast_upstream: FakeUpstream) -> None:
    """After 1,000 streams (a third abandoned at random points) the ledger holds only usage."""
    clock = FrozenClock()
    limiter = InProcessRateLimiter(default_rpm=10**9, default_tpm=TPM, clock=clock)
    repository, key = await user_repository(rpm=10**9, tpm=TPM)
    settings = Settings(
        upstreams={"openai": {"base_url": fast_upstream.url}},
        database_url="sqlite:///unused.db",
    )
    overrides = Overrides(clock=clock, repository=repository, limiter=limiter)
    rng = random.Random(20261128)
    async with serve_in_process(settings, overrides, key) as sidecar:
        url = sidecar.url + "/openai/v1/chat/completions"
        connector = aiohttp.TCPConnector(limit=50, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            modes = [rng.randrange(4) for _ in range(1000)]
            await asyncio.gather(*(_one(session, url, sidecar.key, m) for m in modes))
        service = sidecar.app[SERVICE]
        for _ in range(200):
            if not service.inflight:
                break
            await asyncio.sleep(0.05)
        assert service.inflight == 0
    snapshot = limiter.snapshot("acme")
    assert snapshot is not None
    spent = TPM - snapshot[1]
    completed = modes.count(3)
    assert spent % USAGE_TOKENS == 0, f"a reservation leaked: {spent} tokens spent"
    assert completed * USAGE_TOKENS <= spent <= 1000 * USAGE_TOKENS
