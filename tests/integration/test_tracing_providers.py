"""GenAI spans of an Anthropic-kind upstream through a real in-process sidecar."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from proxy.adapters.tracing_otel import OtelTracing
from proxy.adapters.tracing_otel_setup import tracing_from_env
from proxy.entrypoints.app import Overrides
from proxy.settings import Settings
from tests.support.fake_upstream import (
    ANTHROPIC_FAKE_KEY,
    ANTHROPIC_MODEL,
    ANTHROPIC_USAGE,
    FakeUpstream,
)
from tests.support.inprocess import serve_in_process, user_repository


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_usage_and_provider_land_on_the_client_span(
    upstream: FakeUpstream, stream: bool
) -> None:
    """An upstream named ``claude`` of kind anthropic is ``anthropic``, its prompt counted whole."""
    exporter = InMemorySpanExporter()
    tracing = tracing_from_env({"OTEL_TRACES_EXPORTER": "none"}, exporter=exporter)
    assert isinstance(tracing, OtelTracing)
    repository, key = await user_repository()
    settings = Settings(
        upstreams={
            "claude": {"kind": "anthropic", "base_url": upstream.url, "api_key": ANTHROPIC_FAKE_KEY}
        },
        database_url="sqlite:///unused.db",
    )
    body = {"model": ANTHROPIC_MODEL, "max_tokens": 8, "messages": [], "stream": stream}
    try:
        async with (
            serve_in_process(settings, Overrides(repository=repository, tracer=tracing), key) as s,
            aiohttp.ClientSession() as session,
        ):
            async with session.post(
                s.url + "/claude/v1/messages", data=orjson.dumps(body), headers={"x-api-key": key}
            ) as response:
                assert response.status == 200, await response.text()
                await response.read()
            for _ in range(500):  # spans end once the request has left the service
                if not s.sidecar.service.inflight:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)
            assert tracing.force_flush()
    finally:
        tracing.shutdown()
    (client,) = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.CLIENT]
    attrs = dict(client.attributes or {})
    assert client.name == f"chat {ANTHROPIC_MODEL}"
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.response.id"] == "msg_fake"
    assert attrs["gen_ai.usage.input_tokens"] == 90  # 30 uncached + 40 read + 20 written
    assert attrs["gen_ai.usage.output_tokens"] == ANTHROPIC_USAGE["output_tokens"]
    assert upstream.received[0].headers["anthropic-version"] == "2023-06-01"  # added
