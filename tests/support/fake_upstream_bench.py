"""The fake upstream's bench mode: the replies the benchmark (``python -m bench``) measures.

``FakeUpstream(bench=True)`` serves ``handle`` on every path and method instead of its
test behaviours and records nothing (the load sends it millions of requests). The bench
starts it as ``python -m tests.support.fake_upstream --port P`` (``bench/stage.py``): the
JSON upstream when nginx cannot be had, and always the paced SSE source of the probes.

It answers with the bytes of ``bench/payloads.py``, as the nginx upstream does: the fixed
chat completion ``CHAT_REPLY``; for a streaming request (``"stream": true`` in the body, or
``X-Bench-Stream: 1``) the static SSE body ``static_sse_body()``, or, with
``X-Bench-Chunks: N``, N events ``X-Bench-Gap-Ms`` apart (default 10), each stamped with
``bench_sent_ns`` (CLOCK_MONOTONIC, shared by every process on the host) just before it is
written, then the usage chunk and ``[DONE]``: ``bench/stream_probe.py`` reads the stamps to
tell how long each chunk took to reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
import uvloop
from aiohttp import web

from bench.payloads import CHAT_REPLY, sse_chunk, sse_usage_tail, static_sse_body

PACED_WORDS = ("Hello", "!", " This", " is", " a", " paced", " bench", " reply")
_STATIC_SSE = static_sse_body()


def wants_stream(request: web.Request, body: bytes) -> bool:
    if request.headers.get("X-Bench-Stream"):
        return True
    if b'"stream"' not in body:
        return False
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and parsed.get("stream") is True


async def handle(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if not wants_stream(request, body):
        return web.Response(body=CHAT_REPLY, content_type="application/json")
    chunks = int(request.headers.get("X-Bench-Chunks", "0"))
    if chunks <= 0:
        return web.Response(body=_STATIC_SSE, content_type="text/event-stream")
    gap = float(request.headers.get("X-Bench-Gap-Ms", "10")) / 1000
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for index in range(chunks):
        if index:
            await asyncio.sleep(gap)
        word = PACED_WORDS[index % len(PACED_WORDS)]
        await response.write(sse_chunk(index, word, bench_sent_ns=time.monotonic_ns()))
    await response.write(sse_usage_tail())
    await response.write_eof()
    return response


def main(app: web.Application) -> None:
    """Serve ``app`` on 127.0.0.1:``--port`` until SIGTERM or SIGINT: uvloop, a 4096-deep
    accept backlog (wrk opens 64 connections at once), no access log, nothing printed."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fake_upstream",
        description="The fake upstream in bench mode (tests/support/fake_upstream_bench.py).",
    )
    parser.add_argument("--port", type=int, required=True)
    web.run_app(
        app,
        host="127.0.0.1",
        port=parser.parse_args().port,
        access_log=None,
        print=None,
        backlog=4096,
        loop=uvloop.new_event_loop(),
    )
