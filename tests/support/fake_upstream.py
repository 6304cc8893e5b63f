"""A fake OpenAI/Groq upstream: a real aiohttp server on a real socket, in a thread.

It runs its own event loop in a background thread so that sync SDK clients, the
sidecar under test (in-process or a subprocess) and the test itself can all reach
it. Behaviour is chosen by the request's model name (see ``_BEHAVIOURS``), and
every request it receives is recorded for the test to inspect.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CHUNK_DELAY_SECONDS = 0.2
STREAM_WORDS = ["Hello", " from", " the", " fake", " upstream", "."]


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeUpstream:
    """Handle on the running fake; ``url`` is its origin."""

    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    chunk_sent_at: list[float] = field(default_factory=list)
    last_chunk_sent_at: float = 0.0
    chunk_delay: float = CHUNK_DELAY_SECONDS
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeUpstream:
        ready = threading.Event()
        sock = socket.socket()
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
            self._loop.run_until_complete(self._runner.setup())
            site = web.SockSite(self._runner, sock)
            self._loop.run_until_complete(site.start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
        asyncio.run_coroutine_threadsafe(_cancel_leftovers(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        loop.close()

    def reset(self) -> None:
        self.received.clear()
        self.chunk_sent_at.clear()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(
            Received(
                request.method,
                request.path_qs,
                {k.lower(): v for k, v in request.headers.items()},
                list(request.headers.items()),
                body,
                time.monotonic(),
            )
        )
        if request.path.endswith("/models"):
            return web.json_response(
                {
                    "object": "list",
                    "data": [
                        {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}
                    ],
                }
            )
        payload: dict[str, Any] = {}
        if body:
            try:
                payload = json.loads(body)
            except ValueError:
                return web.json_response({"error": {"message": "bad json"}}, status=400)
        model = str(payload.get("model", "fake-model"))
        behaviour = _BEHAVIOURS.get(model.split(":")[0])
        if behaviour is not None:
            return await behaviour(self, request, payload)
        if payload.get("stream"):
            return await self._stream(request, payload)
        return web.json_response(_completion(model), headers={"x-request-id": "req_fake"})

    async def _stream(self, request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
        model = str(payload.get("model"))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for index, word in enumerate(STREAM_WORDS):
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.chunk_sent_at.append(time.monotonic())
            if index < len(STREAM_WORDS) - 1:
                await asyncio.sleep(self.chunk_delay)
        if (payload.get("stream_options") or {}).get("include_usage"):
            usage_chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17},
            }
            await response.write(f"data: {json.dumps(usage_chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        self.last_chunk_sent_at = time.monotonic()
        await response.write_eof()
        return response


async def _cancel_leftovers() -> None:
    """End handlers still parked (the ``hang`` behaviour) so the loop closes cleanly."""
    current = asyncio.current_task()
    leftovers = [task for task in asyncio.all_tasks() if task is not current]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


def _completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the fake upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


async def _status(status: int, request: web.Request) -> web.Response:
    return web.json_response(
        {"error": {"message": f"fake {status}", "type": "fake_error", "code": f"fake_{status}"}},
        status=status,
        headers={"retry-after-ms": "10", "x-ratelimit-remaining-requests": "0"}
        if status == 429
        else {},
    )


async def _fail_500(_fake: FakeUpstream, request: web.Request, _p: dict[str, Any]) -> web.Response:
    return await _status(500, request)


async def _fail_503(_fake: FakeUpstream, request: web.Request, _p: dict[str, Any]) -> web.Response:
    return await _status(503, request)


async def _fail_429(_fake: FakeUpstream, request: web.Request, _p: dict[str, Any]) -> web.Response:
    return await _status(429, request)


async def _fail_400(_fake: FakeUpstream, request: web.Request, _p: dict[str, Any]) -> web.Response:
    return await _status(400, request)


async def _hang(_fake: FakeUpstream, _request: web.Request, _p: dict[str, Any]) -> web.Response:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def _slow(_fake: FakeUpstream, _request: web.Request, p: dict[str, Any]) -> web.Response:
    await asyncio.sleep(0.5)
    return web.json_response(_completion(str(p.get("model"))))


async def _reset(_fake: FakeUpstream, request: web.Request, _p: dict[str, Any]) -> web.Response:
    assert request.transport is not None
    request.transport.abort()
    raise asyncio.CancelledError


async def _garbage(_fake: FakeUpstream, request: web.Request, _p: dict[str, Any]) -> web.Response:
    assert request.transport is not None
    request.transport.write(b"this is not HTTP at all\r\n\r\n")
    request.transport.close()
    raise asyncio.CancelledError


async def _reset_mid_stream(
    _fake: FakeUpstream, request: web.Request, _p: dict[str, Any]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b'data: {"id":"x","choices":[]}\n\n')
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.abort()
    raise asyncio.CancelledError


_BEHAVIOURS = {
    "fail-500": _fail_500,
    "fail-503": _fail_503,
    "fail-429": _fail_429,
    "fail-400": _fail_400,
    "hang": _hang,
    "slow": _slow,
    "reset": _reset,
    "garbage": _garbage,
    "reset-mid-stream": _reset_mid_stream,
}
