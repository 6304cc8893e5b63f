"""An aiohttp fake upstream: the nginx fallback, and the paced SSE source for the probes.

``python -m bench.fake_upstream --port P``. Any path answers the fixed chat completion.
A streaming request (``"stream": true`` in the body, or ``X-Bench-Stream: 1``) gets SSE:
``X-Bench-Chunks`` events ``X-Bench-Gap-Ms`` apart, each stamped with ``bench_sent_ns``
(CLOCK_MONOTONIC, shared by every process on the host) just before it is written, so a
client can tell how long each chunk took to reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
import uvloop
from aiohttp import web

from bench.payloads import CHAT_REPLY, sse_chunk, sse_usage_tail, static_sse_body

_WORDS = ("Hello", "!", " This", " is", " a", " paced", " bench", " reply")
_STATIC_SSE = static_sse_body()


def _wants_stream(request: web.Request, body: bytes) -> bool:
    if request.headers.get("X-Bench-Stream"):
        return True
    if b'"stream"' not in body:
        return False
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and parsed.get("stream") is True


async def _handle(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if not _wants_stream(request, body):
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
        word = _WORDS[index % len(_WORDS)]
        await response.write(sse_chunk(index, word, bench_sent_ns=time.monotonic_ns()))
    await response.write(sse_usage_tail())
    await response.write_eof()
    return response


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        build_app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=4096,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
