"""The Prometheus helper against a real Prometheus scraping a tiny aiohttp /metrics server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Enum, generate_latest

from proxy.core.breaker import BreakerState, CircuitBreaker
from tests.integration.prometheus_server import (
    PROMTOOL_BIN,
    PrometheusServer,
    make_prometheus_fixture,
    promtool_check_metrics,
    requires_prometheus,
    running_prometheus,
)

start_prometheus = make_prometheus_fixture()

STATE = "llm_sidecar_circuit_breaker_state"


def breaker_registry() -> tuple[CollectorRegistry, Enum]:
    registry = CollectorRegistry()
    states = [s.value for s in BreakerState]
    enum = Enum(
        STATE, "Circuit breaker state per upstream", ["upstream"], states=states, registry=registry
    )
    return registry, enum


@pytest.fixture
async def metrics_target() -> AsyncIterator[tuple[str, CollectorRegistry, Enum]]:
    """Serve a fresh registry at http://127.0.0.1:<free port>/metrics; yield host:port."""
    registry, enum = breaker_registry()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"{host}:{port}", registry, enum
    finally:
        await runner.cleanup()


def state_is(expected: BreakerState) -> str:
    return f'{STATE}{{upstream="groq",{STATE}="{expected.value}"}} == 1'


@requires_prometheus
async def test_prometheus_sees_breaker_state_change(
    start_prometheus: Callable[..., PrometheusServer],
    metrics_target: tuple[str, CollectorRegistry, Enum],
) -> None:
    """A real scrape shows the breaker closed, then open after the hook flips the Enum."""
    target, _, enum = metrics_target
    breaker = CircuitBreaker(
        "groq",
        failure_threshold=2,
        on_transition=lambda name, _old, new: enum.labels(upstream=name).state(new.value),
    )
    enum.labels(upstream="groq").state(breaker.state.value)
    prom = start_prometheus([target])

    up = await prom.wait_for('up{job="llm-sidecar"} == 1')
    assert up[0]["metric"]["instance"] == target
    await prom.wait_for(state_is(BreakerState.CLOSED))

    for _ in range(2):
        breaker.record_failure(breaker.acquire())
    assert breaker.state is BreakerState.OPEN

    rows = await prom.wait_for(state_is(BreakerState.OPEN), within=15.0)
    assert [row["metric"]["upstream"] for row in rows] == ["groq"]
    assert await prom.aquery(state_is(BreakerState.CLOSED)) == []
    assert prom.query(f"count({STATE})")[0]["value"][1] == "3"  # one series per state


@requires_prometheus
async def test_wait_for_fails_with_the_last_result(
    start_prometheus: Callable[..., PrometheusServer],
    metrics_target: tuple[str, CollectorRegistry, Enum],
) -> None:
    """A condition that never holds fails after the bounded wait, naming what was seen."""
    target, _, enum = metrics_target
    enum.labels(upstream="groq").state("closed")
    prom = start_prometheus([target])
    with pytest.raises(AssertionError, match="not satisfied within 2"):
        await prom.wait_for(state_is(BreakerState.HALF_OPEN), within=2.0)


@requires_prometheus
def test_server_is_stopped_after_the_context() -> None:
    """Leaving the context terminates the process: nothing is left running."""
    with running_prometheus([]) as prom:
        assert prom.query("vector(1)")[0]["value"][1] == "1"
        process = prom.process
    assert process.poll() is not None


@pytest.mark.skipif(PROMTOOL_BIN is None, reason="promtool is not installed")
def test_promtool_accepts_the_breaker_enum_exposition() -> None:
    """The prometheus_client Enum exposition of the breaker state passes promtool's lint."""
    registry, enum = breaker_registry()
    enum.labels(upstream="openai").state("half_open")
    promtool_check_metrics(generate_latest(registry).decode())


@pytest.mark.skipif(PROMTOOL_BIN is None, reason="promtool is not installed")
def test_promtool_failure_raises_with_its_output() -> None:
    """A counter without the _total suffix is reported, and the message carries promtool's words."""
    bad = "# HELP requests Requests.\n# TYPE requests counter\nrequests 1\n"
    with pytest.raises(AssertionError, match="_total"):
        promtool_check_metrics(bad)
