"""1,000 streams with random client disconnects leave nothing behind.

No token reservation (the ledger is exact under a frozen clock), no upstream call still
running a second later, no request in flight (service and gauge), every span ended, and
the process's open file descriptors back to their count before the sidecar started.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator

import aiohttp
import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from bench.procs import open_fds
from proxy.adapters.tracing_otel import OtelTracing
from proxy.adapters.tracing_otel_setup import tracing_from_env
from proxy.core.limiter import InProcessRateLimiter
from proxy.entrypoints.app import Overrides
from proxy.settings import Settings
from tests.support.fake_upstream import FakeUpstream
from tests.support.fakes import FakeClock
from tests.support.inprocess import serve_in_process, user_repository
from tests.support.metrics import scrape, value

TPM = 1_000_000_000
USAGE_TOKENS = 17  # what the fake upstream reports per completed stream
MAX_TOKENS = 100_000  # a leaked reservation would stand out by this much


@pytest.fixture
def fast_upstream(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    # Streams last ~0.1 s: long enough that abandoned ones are cut mid-way upstream too.
    upstream.chunk_delay = 0.02
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


async def test_random_disconnects_leave_nothing_behind(fast_upstream: FakeUpstream) -> None:
    """After 1,000 streams (most abandoned at random points) nothing is left held or open."""
    clock = FakeClock()  # never advanced: no refill can hide a leak
    limiter = InProcessRateLimiter(default_rpm=10**9, default_tpm=TPM, clock=clock)
    repository, key = await user_repository(rpm=10**9, tpm=TPM)
    settings = Settings(
        upstreams={"openai": {"base_url": fast_upstream.url}},
        database_url="sqlite:///unused.db",
    )
    exporter = InMemorySpanExporter()
    tracing = tracing_from_env({"OTEL_TRACES_EXPORTER": "none"}, exporter=exporter)
    assert isinstance(tracing, OtelTracing)
    overrides = Overrides(clock=clock, repository=repository, limiter=limiter, tracer=tracing)
    rng = random.Random(20261128)
    modes = [rng.randrange(4) for _ in range(1000)]
    fds_before = open_fds(os.getpid())
    async with serve_in_process(settings, overrides, key) as sidecar:
        url = sidecar.url + "/openai/v1/chat/completions"
        connector = aiohttp.TCPConnector(limit=50, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(_one(session, url, sidecar.key, m) for m in modes))
        service = sidecar.sidecar.service
        await asyncio.sleep(1.0)  # the contract: upstream side released within 1 s
        assert fast_upstream.active == 0, "an abandoned stream is still running upstream"
        assert service.inflight == 0
        samples = await asyncio.to_thread(scrape, sidecar.admin_url)
        assert value(samples, "llm_sidecar_inflight_requests") == 0
        upstream_calls = len(fast_upstream.received)
    tracing.force_flush()
    spans = exporter.get_finished_spans()
    client_spans = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert len(client_spans) == upstream_calls, "every upstream call's span ended"
    tracing.shutdown()
    await asyncio.sleep(0.1)  # let the fake close its side of the pooled connections
    assert open_fds(os.getpid()) <= fds_before, "a socket or file was left open"

    snapshot = limiter.snapshot("acme")
    assert snapshot is not None
    spent = TPM - snapshot[1]
    completed = modes.count(3)
    assert spent % USAGE_TOKENS == 0, f"a reservation leaked: {spent} tokens spent"
    assert completed * USAGE_TOKENS <= spent <= 1000 * USAGE_TOKENS
