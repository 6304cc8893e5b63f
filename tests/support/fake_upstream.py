"""A fake OpenAI/Groq upstream: a real aiohttp server on a real socket, in a thread.

It runs its own event loop in a background thread so that sync SDK clients, the
sidecar under test (in-process or a subprocess) and the test itself can all reach
it. Behaviour is chosen by the request's model name (see ``_BEHAVIOURS``), and
every request it receives is recorded for the test to inspect.

It is also the fault injector (Toxiproxy is not installable here): models named
``fail-<status>`` answer that status (429 with ``retry-after-ms``), ``hang`` accepts
and never answers, ``reset`` / ``reset-mid-body`` / ``reset-mid-stream`` cut the
connection before the head, inside a sized body or inside a stream, ``garbage``
answers something that is not HTTP, ``drip`` streams SSE slowly (``DRIP_SECONDS``
between events), ``gzip`` answers a gzip-encoded completion. Refused connections need
no behaviour: point an upstream at a port nothing listens on
(``tests.support.sidecar.free_port``).

``FakeUpstream(keep_encoding=True)`` records request bodies as they came on the wire,
still in their ``Content-Encoding`` (aiohttp decodes them otherwise), and decodes a
bounded copy itself to read the model: 415 for a coding it cannot decode, 400 for a
body not in its coding, 413 past ``DECODED_LIMIT``.

``FakeUpstream(bench=True)`` answers as the benchmark's upstream instead and records nothing
(``tests/support/fake_upstream_bench.py``); ``bench/stage.py`` runs it as
``python -m tests.support.fake_upstream --port P``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support import fake_upstream_bench
from tests.support.compressed_bodies import TooLarge, Undecodable, Unsupported, decode

CHUNK_DELAY_SECONDS = 0.2
DRIP_SECONDS = 0.4
STREAM_WORDS = ["Hello", " from", " the", " fake", " upstream", "."]
DECODED_LIMIT = 16 * 1024 * 1024
"""With ``keep_encoding``: the most a request body is decoded to."""


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
    active: int = 0
    """Requests the fake is still answering (a proxy that dropped its side ends them)."""
    spans: list[bytes] = field(default_factory=list)
    """OTLP/HTTP export requests received on ``/v1/traces`` (raw protobuf)."""
    keep_encoding: bool = False
    """Record bodies still content-encoded, as sent; decode a bounded copy (module doc)."""
    tls: ssl.SSLContext | None = None
    """Serve HTTPS with this context (``url`` is then ``https://``)."""
    bench: bool = False
    """Answer as the benchmark's upstream and record nothing (module doc)."""
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> FakeUpstream:
        ready = threading.Event()
        sock = socket.socket()
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            # handler_cancellation: a handler whose client left stops, as a real server would.
            raw: dict[str, Any] = {"auto_decompress": False} if self.keep_encoding else {}
            self._runner = web.AppRunner(
                self._app(),
                access_log=None,
                shutdown_timeout=0.5,
                handler_cancellation=True,
                **raw,
            )
            self._loop.run_until_complete(self._runner.setup())
            site = web.SockSite(self._runner, sock, ssl_context=self.tls)
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

    @property
    def open_connections(self) -> int:
        """Connections the fake holds open now (a released proxy connection closes or idles)."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    def _app(self) -> web.Application:
        app = web.Application()
        handler = fake_upstream_bench.handle if self.bench else self._handle
        app.router.add_route("*", "/{tail:.*}", handler)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        try:
            return await self._answer(request)
        finally:
            self.active -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path == "/v1/traces":  # serving as an OTLP/HTTP span sink
            self.spans.append(body)
            return web.Response(body=b"", content_type="application/x-protobuf")
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
        encoding = ", ".join(request.headers.getall("Content-Encoding", ())) or None
        if self.keep_encoding and encoding is not None:
            try:
                body = decode(body, encoding, DECODED_LIMIT)
            except (Unsupported, Undecodable, TooLarge) as exc:
                status = {Unsupported: 415, Undecodable: 400, TooLarge: 413}[type(exc)]
                message = f"fake: cannot decode {encoding!r}"
                return web.json_response({"error": {"message": message}}, status=status)
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

    async def _stream(
        self, request: web.Request, payload: dict[str, Any], delay: float | None = None
    ) -> web.StreamResponse:
        delay = self.chunk_delay if delay is None else delay
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
                await asyncio.sleep(delay)
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


def _failing(status: int) -> Behaviour:
    async def fail(_fake: FakeUpstream, request: web.Request, _p: dict[str, Any]) -> web.Response:
        return await _status(status, request)

    return fail


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


async def _reset_mid_body(
    _fake: FakeUpstream, request: web.Request, _p: dict[str, Any]
) -> web.StreamResponse:
    # A sized JSON body that stops a few bytes in: the proxy has its head by then.
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = 4096
    return await _cut_after(request, response, b'{"id": "chatcmpl-cut", "choi')


async def _drip(
    fake: FakeUpstream, request: web.Request, payload: dict[str, Any]
) -> web.StreamResponse:
    return await fake._stream(request, payload, delay=DRIP_SECONDS)


async def _gzip(_fake: FakeUpstream, _request: web.Request, p: dict[str, Any]) -> web.Response:
    body = gzip.compress(json.dumps(_completion(str(p.get("model")))).encode())
    return web.Response(
        body=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )


async def _reset_mid_stream(
    _fake: FakeUpstream, request: web.Request, _p: dict[str, Any]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    return await _cut_after(request, response, b'data: {"id":"x","choices":[]}\n\n')


async def _cut_after(
    request: web.Request, response: web.StreamResponse, first: bytes
) -> web.StreamResponse:
    """Send the head and ``first``, then reset the connection."""
    await response.prepare(request)
    await response.write(first)
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.abort()
    raise asyncio.CancelledError


Behaviour = Callable[[FakeUpstream, web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]

_BEHAVIOURS: dict[str, Behaviour] = {
    **{f"fail-{status}": _failing(status) for status in (400, 429, 500, 502, 503, 504)},
    "hang": _hang,
    "slow": _slow,
    "reset": _reset,
    "garbage": _garbage,
    "reset-mid-stream": _reset_mid_stream,
    "reset-mid-body": _reset_mid_body,
    "drip": _drip,
    "gzip": _gzip,
}


# Provider kinds (docs/providers.md): the fake answers these models only when the request
# arrives where, and with the credentials, the real provider expects; otherwise it
# answers that provider's 401/404, so a sidecar that gets either wrong fails the test.
ANTHROPIC_FAKE_KEY = "sk-ant-provider-fake-0123456789SECRET"
AZURE_FAKE_KEY = "azure-provider-fake-0123456789SECRET"
ANTHROPIC_MODEL = "claude-fake"
AZURE_DEPLOYMENT = "azure-fake"
ANTHROPIC_USAGE = {
    "input_tokens": 30,
    "cache_read_input_tokens": 40,
    "cache_creation_input_tokens": 20,
    "output_tokens": 10,
}
"""What every ``claude-fake`` message costs: a 90-token prompt (30 + 40 + 20), 10 out."""
_API_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _anthropic_error(status: int, kind: str, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status)


async def _anthropic(
    _fake: FakeUpstream, request: web.Request, payload: dict[str, Any]
) -> web.StreamResponse:
    if request.path != "/v1/messages":
        return _anthropic_error(404, "not_found_error", f"fake: no route {request.path}")
    if request.headers.get("x-api-key") != ANTHROPIC_FAKE_KEY or "authorization" in request.headers:
        return _anthropic_error(401, "authentication_error", "fake: invalid x-api-key")
    version = request.headers.getall("anthropic-version", [])
    if len(version) != 1 or _API_DATE.fullmatch(version[0]) is None:
        return _anthropic_error(400, "invalid_request_error", "fake: one anthropic-version")
    if "stream_options" in payload:
        return _anthropic_error(400, "invalid_request_error", "fake: stream_options: unknown")
    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": ANTHROPIC_MODEL,
        "content": [{"type": "text", "text": "Hello from the fake upstream."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": dict(ANTHROPIC_USAGE),
    }
    if not payload.get("stream"):
        return web.json_response(message, headers={"request-id": "req_fake"})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    usage = {**ANTHROPIC_USAGE, "output_tokens": 1}
    start = {**message, "content": [], "stop_reason": None, "usage": usage}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
    ]
    events += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
        for w in STREAM_WORDS
    ]
    events += [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": ANTHROPIC_USAGE["output_tokens"]},
        },
        {"type": "message_stop"},
    ]
    for event in events:
        line = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
        await response.write(line.encode())
    await response.write_eof()
    return response


async def _azure(
    fake: FakeUpstream, request: web.Request, payload: dict[str, Any]
) -> web.StreamResponse:
    expected = f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions"
    if request.path != expected or not request.query.get("api-version"):
        message = f"fake azure: no deployment route {request.path_qs}"
        return web.json_response({"error": {"code": "404", "message": message}}, status=404)
    if request.headers.get("api-key") != AZURE_FAKE_KEY or "authorization" in request.headers:
        message = "fake azure: Access denied due to invalid subscription key."
        return web.json_response({"error": {"code": "401", "message": message}}, status=401)
    if payload.get("stream"):
        return await fake._stream(request, payload)
    return web.json_response(_completion(AZURE_DEPLOYMENT))


_BEHAVIOURS[ANTHROPIC_MODEL] = _anthropic
_BEHAVIOURS[AZURE_DEPLOYMENT] = _azure


if __name__ == "__main__":  # python -m tests.support.fake_upstream --port P (module doc)
    fake_upstream_bench.main(FakeUpstream(bench=True)._app())
