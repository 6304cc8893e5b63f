"""OTLP export end to end: the real ``llm-sidecar serve`` sends its spans to a collector.

The collector is a small in-process receiver (aiohttp for OTLP/HTTP, grpc.aio for
OTLP/gRPC) decoding ``ExportTraceServiceRequest`` with opentelemetry-proto; the sidecar
is a subprocess configured only through the standard ``OTEL_*`` variables.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.conftest import sidecar_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.sidecar import SidecarProcess, free_port

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
ExportRequest = trace_service_pb2.ExportTraceServiceRequest


class Collector:
    """Spans received, flattened to (resource attributes, span) pairs."""

    def __init__(self) -> None:
        self.requests: list[ExportRequest] = []
        self.arrived = asyncio.Event()

    def add(self, request: ExportRequest) -> None:
        self.requests.append(request)
        self.arrived.set()

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        return [
            (_attrs(rs.resource.attributes), span)
            for request in self.requests
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]


def _value(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value") or "string_value")


def _attrs(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


@asynccontextmanager
async def http_collector() -> AsyncIterator[tuple[str, Collector]]:
    collector = Collector()

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        collector.add(ExportRequest.FromString(await request.read()))
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", collector
    finally:
        await runner.cleanup()


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    async def Export(
        self, request: ExportRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._collector.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@asynccontextmanager
async def grpc_collector() -> AsyncIterator[tuple[str, Collector]]:
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(collector), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", collector
    finally:
        await server.stop(None)


async def _run_sidecar(
    workdir: Path, fake: FakeUpstream, otel: Mapping[str, str], requests: int = 1
) -> SidecarProcess:
    """Start a sidecar, make ``requests`` chat calls, stop it (its exit flushes the spans)."""
    process = SidecarProcess(workdir, env=sidecar_env(fake, **otel))
    key = await asyncio.to_thread(process.create_user, "acme", "alice")
    await asyncio.to_thread(process.start)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(requests):
                async with session.post(
                    process.url + "/openai/v1/chat/completions",
                    data=orjson.dumps({"model": "fake-model", "messages": []}),
                    headers={
                        "Authorization": f"Bearer {key}",
                        "Content-Type": "application/json",
                        "traceparent": f"00-{CALLER_TRACE}-b7ad6b7169203331-01",
                    },
                ) as response:
                    assert response.status == 200
    finally:
        # In a thread: the collector shares this event loop and must answer the final flush.
        code = await asyncio.to_thread(process.stop)
    assert code == 0, process.logs()
    return process


def _check_spans(collector: Collector) -> None:
    spans = collector.spans()
    names = sorted(span.name for _, span in spans)
    assert names == ["POST", "chat fake-model"], names
    for resource, span in spans:
        assert resource["service.name"] == "llm-sidecar"
        assert span.trace_id.hex() == CALLER_TRACE
    client = next(span for _, span in spans if span.name == "chat fake-model")
    attrs = _attrs(client.attributes)
    assert attrs["gen_ai.usage.input_tokens"] == 11
    assert attrs["gen_ai.usage.output_tokens"] == 7
    assert attrs["gen_ai.provider.name"] == "openai"


async def test_spans_reach_an_otlp_http_collector(upstream: FakeUpstream, tmp_path: Path) -> None:
    """Pointed at a collector by endpoint and protocol alone, the sidecar exports over OTLP/HTTP."""
    async with http_collector() as (endpoint, collector):
        await _run_sidecar(
            tmp_path,
            upstream,
            {
                "OTEL_TRACES_EXPORTER": "otlp",  # the default; the test helper sets "none"
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
        )
    _check_spans(collector)


async def test_spans_reach_an_otlp_grpc_collector(upstream: FakeUpstream, tmp_path: Path) -> None:
    """``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` switches the same spans to OTLP/gRPC."""
    async with grpc_collector() as (endpoint, collector):
        await _run_sidecar(
            tmp_path,
            upstream,
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_SERVICE_NAME": "llm-sidecar",
            },
        )
    _check_spans(collector)


async def test_absent_collector_gives_one_warning_then_quiet(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """With nothing listening, many failed batches log exactly one warning and no library noise."""
    dead = f"http://127.0.0.1:{free_port()}"
    process = await _run_sidecar(
        tmp_path,
        upstream,
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": dead,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "0.5",
            "OTEL_BSP_SCHEDULE_DELAY": "20",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
        },
        requests=12,
    )
    lines = process.logs().splitlines()
    events = [orjson.loads(line).get("event") for line in lines if line.startswith("{")]
    assert events.count("trace_export_failing") == 1
    noise = [line for line in lines if "export" in line.lower() and "_failing" not in line]
    assert noise == []
    assert events.count("request") == 12
