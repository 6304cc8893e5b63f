"""Tracing through a real sidecar served in-process: W3C propagation, span tree, GenAI attributes.

The sidecar runs ``create_app`` on a real socket with an ``OtelTracing`` whose spans go
to the SDK's in-memory exporter; the fake upstream records the headers it receives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import orjson
import structlog
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proxy.adapters.tracing_otel import OtelTracing
from proxy.adapters.tracing_otel_setup import tracing_from_env
from proxy.core.ports import NoTracer
from proxy.entrypoints.app import Overrides
from proxy.settings import Settings
from tests.conftest import OPENAI_PROVIDER_KEY
from tests.support.fake_upstream import STREAM_WORDS, FakeUpstream
from tests.support.inprocess import InProcessSidecar, serve_in_process, user_repository
from tests.support.sidecar import free_port

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CHAT = "/openai/v1/chat/completions"
MARKER = "prompt-marker-7f3a9c"


@dataclass
class Traced:
    sidecar: InProcessSidecar
    tracing: OtelTracing
    exporter: InMemorySpanExporter

    async def spans(self) -> list[ReadableSpan]:
        """Every span of the requests made so far (they end after the response is out)."""
        service = self.sidecar.sidecar.service
        for _ in range(500):
            if not service.inflight:
                break
            await asyncio.sleep(0.01)
        # Tracer.finish runs in the handler right after the service returns, with no await
        # in between, so once nothing is in flight every span has ended.
        await asyncio.sleep(0)
        assert self.tracing.force_flush()
        return list(self.exporter.get_finished_spans())


@asynccontextmanager
async def traced_sidecar(
    fake: FakeUpstream, env: Mapping[str, str] | None = None
) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    tracing = tracing_from_env({"OTEL_TRACES_EXPORTER": "none", **(env or {})}, exporter=exporter)
    assert isinstance(tracing, OtelTracing)
    repository, key = await user_repository()
    settings = Settings(
        upstreams={"openai": {"base_url": fake.url, "api_key": OPENAI_PROVIDER_KEY}},
        database_url="sqlite:///unused.db",
        upstream_read_timeout_seconds=2.0,
    )
    overrides = Overrides(repository=repository, tracer=tracing)
    try:
        async with serve_in_process(settings, overrides, key) as sidecar:
            yield Traced(sidecar, tracing, exporter)
    finally:
        tracing.shutdown()


async def _chat(
    traced: Traced, body: dict[str, object], headers: Mapping[str, str] | None = None
) -> tuple[int, bytes]:
    sidecar = traced.sidecar
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            sidecar.url + CHAT,
            data=orjson.dumps(body),
            headers={
                "Authorization": f"Bearer {sidecar.key}",
                "Content-Type": "application/json",
                **(headers or {}),
            },
        ) as response,
    ):
        return response.status, await response.read()


def _one(spans: list[ReadableSpan], kind: SpanKind) -> ReadableSpan:
    found = [span for span in spans if span.kind is kind]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


async def test_caller_trace_reaches_upstream_with_client_span_as_parent(
    upstream: FakeUpstream,
) -> None:
    """The upstream sees the caller's trace id, the sidecar's client span as parent, and baggage."""
    async with traced_sidecar(upstream) as traced:
        status, _ = await _chat(
            traced,
            {"model": "fake-model", "messages": [{"role": "user", "content": MARKER}]},
            {
                "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                "tracestate": "vendor=abc",
                "baggage": "team=search",
            },
        )
        spans = await traced.spans()
    assert status == 200
    server, client = _one(spans, SpanKind.SERVER), _one(spans, SpanKind.CLIENT)
    assert _hex(server.context.trace_id, 32) == CALLER_TRACE
    assert server.parent is not None
    assert _hex(server.parent.span_id, 16) == CALLER_SPAN
    assert client.parent is not None
    assert client.parent.span_id == server.context.span_id
    sent = upstream.received[-1].headers
    version, trace_id, parent_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", CALLER_TRACE, "01")
    assert parent_id == _hex(client.context.span_id, 16)
    assert sent["tracestate"] == "vendor=abc"
    assert sent["baggage"] == "team=search"


async def test_several_tracestate_headers_are_combined(upstream: FakeUpstream) -> None:
    """Two tracestate fields are one list (W3C Trace Context 3.3.1.1): both reach the upstream."""
    async with traced_sidecar(upstream) as traced, aiohttp.ClientSession() as session:
        sidecar = traced.sidecar
        headers = [
            ("Authorization", f"Bearer {sidecar.key}"),
            ("Content-Type", "application/json"),
            ("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"),
            ("tracestate", "first=1"),
            ("tracestate", "second=2"),
        ]
        body = orjson.dumps({"model": "fake-model", "messages": []})
        async with session.post(sidecar.url + CHAT, data=body, headers=headers) as response:
            assert response.status == 200
    assert upstream.received[-1].headers["tracestate"] == "first=1,second=2"


async def test_genai_attributes_hold_the_fakes_model_and_usage(upstream: FakeUpstream) -> None:
    """The client span is named ``chat <model>`` and carries GenAI request, response and usage."""
    async with traced_sidecar(upstream) as traced:
        await _chat(traced, {"model": "fake-model", "messages": []})
        spans = await traced.spans()
    server, client = _one(spans, SpanKind.SERVER), _one(spans, SpanKind.CLIENT)
    assert client.name == "chat fake-model"
    attrs = dict(client.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "fake-model"
    assert attrs["gen_ai.response.model"] == "fake-model"
    assert attrs["gen_ai.response.id"] == "chatcmpl-fake"
    assert attrs["gen_ai.usage.input_tokens"] == 11
    assert attrs["gen_ai.usage.output_tokens"] == 7
    assert attrs["llm_sidecar.tenant"] == "acme"
    assert attrs["http.response.status_code"] == 200
    assert (attrs["server.address"], attrs["server.port"]) == ("127.0.0.1", upstream.port)
    assert attrs["url.full"] == upstream.url + "/v1/chat/completions"
    server_attrs = dict(server.attributes or {})
    assert server.name == "POST"
    assert server_attrs["http.response.status_code"] == 200
    assert server_attrs["llm_sidecar.tenant"] == "acme"
    assert server_attrs["llm_sidecar.correlation_id"] == attrs["llm_sidecar.correlation_id"]
    assert "gen_ai.usage.input_tokens" not in server_attrs  # counted once, on the GenAI span


async def test_stream_usage_lands_on_a_client_span_that_covers_the_stream(
    upstream: FakeUpstream,
) -> None:
    """For a stream the client span ends after the last chunk, holding the final usage chunk."""
    async with traced_sidecar(upstream) as traced:
        status, body = await _chat(traced, {"model": "fake-model", "stream": True, "messages": []})
        spans = await traced.spans()
    assert status == 200
    assert b"[DONE]" in body
    server, client = _one(spans, SpanKind.SERVER), _one(spans, SpanKind.CLIENT)
    attrs = dict(client.attributes or {})
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (11, 6)
    assert client.start_time is not None
    assert client.end_time is not None
    stream_seconds = (len(STREAM_WORDS) - 1) * upstream.chunk_delay
    # Ended by the instrumentation at the head, it would last milliseconds.
    assert (client.end_time - client.start_time) / 1e9 >= stream_seconds * 0.9
    assert server.end_time is not None
    assert client.end_time <= server.end_time


async def test_malformed_traceparent_starts_a_new_trace(upstream: FakeUpstream) -> None:
    """A malformed ``traceparent`` is ignored: a fresh root trace that still reaches upstream."""
    async with traced_sidecar(upstream) as traced:
        await _chat(
            traced,
            {"model": "fake-model", "messages": []},
            {"traceparent": f"00-{CALLER_TRACE}-zz{CALLER_SPAN[2:]}-01"},
        )
        spans = await traced.spans()
    server = _one(spans, SpanKind.SERVER)
    assert server.parent is None
    trace_id = _hex(server.context.trace_id, 32)
    assert trace_id != CALLER_TRACE
    assert upstream.received[-1].headers["traceparent"].split("-")[1] == trace_id


async def test_access_line_carries_the_server_spans_ids(upstream: FakeUpstream) -> None:
    """The access log's ``trace_id``/``span_id`` are the server span's, in W3C hex form."""
    async with traced_sidecar(upstream) as traced:
        with structlog.testing.capture_logs() as logs:
            await _chat(traced, {"model": "fake-model", "messages": []})
            spans = await traced.spans()
    server = _one(spans, SpanKind.SERVER)
    access = [line for line in logs if line["event"] == "request"]
    assert len(access) == 1
    assert access[0]["trace_id"] == _hex(server.context.trace_id, 32)
    assert access[0]["span_id"] == _hex(server.context.span_id, 16)


async def test_unsampled_requests_still_propagate(upstream: FakeUpstream) -> None:
    """With ``always_off`` nothing is recorded, yet the caller's trace id still goes upstream."""
    async with traced_sidecar(upstream, {"OTEL_TRACES_SAMPLER": "always_off"}) as traced:
        await _chat(
            traced,
            {"model": "fake-model", "messages": []},
            {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
        )
        spans = await traced.spans()
    assert spans == []
    assert upstream.received[-1].headers["traceparent"].split("-")[1] == CALLER_TRACE


async def test_failures_mark_the_spans_as_errors(upstream: FakeUpstream) -> None:
    """An upstream 500 marks the client span; an unreachable upstream marks the server span
    and each attempt's client span (retries carry http.request.resend_count)."""
    async with traced_sidecar(upstream) as traced:
        status, _ = await _chat(traced, {"model": "fail-500", "messages": []})
        spans = await traced.spans()
    assert status == 500
    client = _one(spans, SpanKind.CLIENT)
    assert client.status.status_code is StatusCode.ERROR
    assert client.name == "chat fail-500"
    dead = FakeUpstream(port=free_port())
    async with traced_sidecar(dead) as traced:
        status, _ = await _chat(traced, {"model": "fake-model", "messages": []})
        spans = await traced.spans()
    assert status == 502
    server = _one(spans, SpanKind.SERVER)
    assert server.status.status_code is StatusCode.ERROR
    assert dict(server.attributes or {})["error.type"] == "502"
    # Refused connections are retried: one client span per attempt, each failed.
    clients = sorted(
        (span for span in spans if span.kind is SpanKind.CLIENT),
        key=lambda span: span.start_time or 0,
    )
    assert len(clients) == 3
    for resend, client in enumerate(clients):
        attributes = dict(client.attributes or {})
        assert client.status.status_code is StatusCode.ERROR
        assert client.parent is not None
        assert client.parent.span_id == server.context.span_id
        assert "error.type" in attributes
        assert attributes.get("http.request.resend_count") == (resend or None)


async def test_secrets_never_reach_span_attributes(upstream: FakeUpstream) -> None:
    """No header, key, Authorization value or prompt is recorded on any span."""
    async with traced_sidecar(upstream, {}) as traced:
        await _chat(
            traced,
            {"model": "fake-model", "messages": [{"role": "user", "content": MARKER}]},
            {"X-Api-Key": OPENAI_PROVIDER_KEY},
        )
        spans = await traced.spans()
        key = traced.sidecar.key
    client = _one(spans, SpanKind.CLIENT)
    assert not [name for name in client.attributes or {} if ".header." in name]
    dump = "\n".join(span.to_json() for span in spans)
    for secret in (key, OPENAI_PROVIDER_KEY, MARKER, "Bearer "):
        assert secret not in dump


def test_sdk_disabled_is_the_no_tracer() -> None:
    """``OTEL_SDK_DISABLED=true`` gives the one-call-each-way ``NoTracer``."""
    assert isinstance(tracing_from_env({"OTEL_SDK_DISABLED": "TRUE"}), NoTracer)
