"""Circuit breakers through an in-process sidecar: open fast, probe once, recover, stay isolated."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import aiohttp
import pytest

from tests.conftest import sidecar_env
from tests.integration.prometheus_server import (
    PrometheusServer,
    make_prometheus_fixture,
    requires_prometheus,
)
from tests.support.fake_upstream import FakeUpstream
from tests.support.inprocess import ThreadedSidecar
from tests.support.sidecar import http_get

COOLDOWN_SECONDS = 1.0


@pytest.fixture
def breaker_sidecar(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ThreadedSidecar, str]]:
    """A fresh sidecar per test (breakers start closed) with a 1 s cooldown."""
    process = ThreadedSidecar(
        tmp_path_factory.mktemp("breaker"),
        env=sidecar_env(
            fake_upstream,
            LLM_SIDECAR_BREAKER_COOLDOWN_SECONDS=str(COOLDOWN_SECONDS),
            LLM_SIDECAR_DEFAULT_RPM="100000",
        ),
    ).start()
    key = process.create_user("acme", "alice", tpm=100_000_000)
    yield process, key
    assert process.stop()


async def _chat(
    session: aiohttp.ClientSession,
    sidecar: ThreadedSidecar,
    key: str,
    model: str,
    upstream: str = "openai",
) -> tuple[int, dict[str, str], float]:
    path = (
        "/openai/v1/chat/completions"
        if upstream == "openai"
        else "/groq/openai/v1/chat/completions"
    )
    started = time.monotonic()
    async with session.post(
        sidecar.url + path,
        json={"model": model, "messages": []},
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        await response.read()
        return response.status, dict(response.headers), time.monotonic() - started


def _state(sidecar: ThreadedSidecar, upstream: str) -> str:
    prefix = "llm_sidecar_circuit_breaker_state{"
    for line in http_get(sidecar.admin_url + "/metrics").splitlines():
        if line.startswith(prefix) and line.endswith(" 1.0") and f'upstream="{upstream}"' in line:
            return line.split('llm_sidecar_circuit_breaker_state="')[1].split('"')[0]
    raise AssertionError(f"no breaker state for {upstream}")


async def test_opens_after_five_failures_and_recovers_with_one_probe(
    breaker_sidecar: tuple[ThreadedSidecar, str], upstream: FakeUpstream
) -> None:
    """Five 500s pass through; the sixth is a fast 503; after the cooldown one probe closes it."""
    sidecar, key = breaker_sidecar
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            status, _, _ = await _chat(session, sidecar, key, "fail-500")
            assert status == 500
        assert len(upstream.received) == 5
        status, headers, elapsed = await _chat(session, sidecar, key, "fail-500")
        assert status == 503
        assert elapsed < 0.05
        assert 1 <= int(headers["Retry-After"]) <= 2
        assert len(upstream.received) == 5
        assert _state(sidecar, "openai") == "open"
        status, _, _ = await _chat(session, sidecar, key, "gpt-test", upstream="groq")
        assert status == 200
        assert _state(sidecar, "groq") == "closed"
        await asyncio.sleep(COOLDOWN_SECONDS + 0.1)
        status, _, _ = await _chat(session, sidecar, key, "gpt-test")
        assert status == 200
        assert _state(sidecar, "openai") == "closed"
    metrics = http_get(sidecar.admin_url + "/metrics")
    assert (
        'llm_sidecar_circuit_breaker_transitions_total{to="open",upstream="openai"} 1.0' in metrics
    )
    assert (
        'llm_sidecar_circuit_breaker_transitions_total{to="half_open",upstream="openai"} 1.0'
        in metrics
    )
    assert (
        'llm_sidecar_circuit_breaker_transitions_total{to="closed",upstream="openai"} 1.0'
        in metrics
    )
    assert '"event":"circuit_breaker"' in sidecar.logs()


async def test_half_open_admits_exactly_one_probe(
    breaker_sidecar: tuple[ThreadedSidecar, str], upstream: FakeUpstream
) -> None:
    """50 concurrent requests at half-open make exactly one upstream call; the rest get 503."""
    sidecar, key = breaker_sidecar
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            await _chat(session, sidecar, key, "fail-503")
        await asyncio.sleep(COOLDOWN_SECONDS + 0.1)
        upstream.reset()
        results = await asyncio.gather(*(_chat(session, sidecar, key, "slow") for _ in range(50)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(200) == 1
    assert statuses.count(503) == 49
    assert len(upstream.received) == 1
    assert _state(sidecar, "openai") == "closed"


async def test_429s_and_disconnects_never_open_it(
    breaker_sidecar: tuple[ThreadedSidecar, str], upstream: FakeUpstream
) -> None:
    """Upstream 429s and callers that hang up are not upstream failures."""
    sidecar, key = breaker_sidecar
    async with aiohttp.ClientSession() as session:
        for _ in range(8):
            status, _, _ = await _chat(session, sidecar, key, "fail-429")
            assert status == 429
        for _ in range(8):
            with pytest.raises(asyncio.TimeoutError):
                async with asyncio.timeout(0.1):
                    await _chat(session, sidecar, key, "slow")
    await asyncio.sleep(0.6)
    assert _state(sidecar, "openai") == "closed"


start_prometheus = make_prometheus_fixture()


@requires_prometheus
async def test_prometheus_sees_the_breaker_open(
    breaker_sidecar: tuple[ThreadedSidecar, str],
    upstream: FakeUpstream,
    start_prometheus: Callable[..., PrometheusServer],
) -> None:
    """A real Prometheus scraping the ops port sees the breaker go from closed to open."""
    sidecar, key = breaker_sidecar
    prometheus = start_prometheus([f"127.0.0.1:{sidecar.admin_port}"])
    state = (
        "llm_sidecar_circuit_breaker_state"
        '{upstream="openai",llm_sidecar_circuit_breaker_state="%s"}'
    )
    await prometheus.wait_for(state % "closed", lambda r: r and r[0]["value"][1] == "1")
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            await _chat(session, sidecar, key, "fail-500")
    await prometheus.wait_for(state % "open", lambda r: r and r[0]["value"][1] == "1")
    transitions = prometheus.query(
        'llm_sidecar_circuit_breaker_transitions_total{upstream="openai",to="open"}'
    )
    assert transitions[0]["value"][1] == "1"
