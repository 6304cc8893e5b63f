"""A local OTLP/HTTP trace receiver for the benchmark: decodes each batch and counts spans.

``python -m bench.otlp_receiver --port N``; ``POST /v1/traces`` takes protobuf batches
(as a collector would, answering an empty ``ExportTraceServiceResponse``), ``GET
/counts`` says how many server and client spans arrived, so the run can set spans
exported against requests served. It runs on the helper core, beside nginx and wrk.
"""

from __future__ import annotations

import argparse

import orjson
import uvloop
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_SERVER, _CLIENT = 2, 3
_REPLY = ExportTraceServiceResponse().SerializeToString()


def app() -> web.Application:
    counts = {"batches": 0, "server": 0, "client": 0, "other": 0, "bytes": 0}

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        message = ExportTraceServiceRequest.FromString(body)
        counts["batches"] += 1
        counts["bytes"] += len(body)
        for resource in message.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    kind = span.kind
                    key = "server" if kind == _SERVER else "client" if kind == _CLIENT else "other"
                    counts[key] += 1
        return web.Response(body=_REPLY, content_type="application/x-protobuf")

    async def read_counts(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(counts), content_type="application/json")

    made = web.Application(client_max_size=64 * 1024 * 1024)
    made.router.add_post("/v1/traces", traces)
    made.router.add_get("/counts", read_counts)
    made.router.add_get("/", read_counts)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_receiver")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
