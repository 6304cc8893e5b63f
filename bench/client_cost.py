"""CPU per call: the lean upstream client against aiohttp's ClientSession (ADR 0003).

``python -m bench.client_cost [--calls N] [--concurrency C] [--rounds R]``

One local upstream, a raw asyncio protocol in its own process (on the last core),
answers every POST with the 712-byte chat completion of ``bench.payloads``, keep-alive.
This process (on core 0, uvloop) sends ``calls`` POSTs through each client in turn,
``concurrency`` at a time, the clients alternating for ``rounds`` rounds, and reports
the process's CPU time (user + system) per call: the median over rounds, and the ratio.
aiohttp runs as tuned as it gets for this: one session, a keep-alive connector with a
DNS cache, no decompression, no redirects, no cookie jar.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop

from bench.payloads import CHAT_REPLY, request_body
from proxy.adapters.upstream_http11 import Http11Transport

HEADERS = [
    ("Content-Type", "application/json"),
    ("Authorization", "Bearer sk-bench-0000000000000000"),
    ("Accept", "application/json"),
]
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    % len(CHAT_REPLY)
    + CHAT_REPLY
)
Client = Callable[[], Awaitable[None]]


class _Upstream(asyncio.Protocol):
    """Answers each whole request (head and Content-Length body) with ``ANSWER``."""

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = buffer[:end].lower()
            start = head.find(b"content-length:")
            length = int(head[start + 15 : head.find(b"\r\n", start)]) if start >= 0 else 0
            if len(buffer) < end + 4 + length:
                break
            buffer = buffer[end + 4 + length :]
            assert self._transport is not None
            self._transport.write(ANSWER)
        self._buffer = buffer


def serve(port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Upstream, "127.0.0.1", port, backlog=1024)
        print("ready", flush=True)
        await server.serve_forever()

    uvloop.run(main())


async def _drive(client: Client, calls: int, concurrency: int) -> float:
    """CPU seconds of this process for ``calls`` calls, ``concurrency`` at a time."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await client()

    share = [calls // concurrency] * concurrency
    await asyncio.gather(*(worker(count) for count in share[: concurrency // 4]))  # warm-up
    started = time.process_time()
    await asyncio.gather(*(worker(count) for count in share))
    return time.process_time() - started


async def _measure(
    origin: str, calls: int, concurrency: int, rounds: int
) -> dict[str, list[float]]:
    url, body = origin + "/v1/chat/completions", request_body(stream=False)
    lean = Http11Transport(
        {"up": origin}, connect_timeout=5.0, read_timeout=30.0, max_connections=concurrency
    )

    async def lean_call() -> None:
        response = await lean.send("up", "POST", url, HEADERS, body)
        try:
            assert len(await response.read()) == len(CHAT_REPLY)
        finally:
            response.close()

    connector = aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=300, keepalive_timeout=30)
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30),
    )

    async def aiohttp_call() -> None:
        async with session.post(url, data=body, headers=HEADERS, allow_redirects=False) as answer:
            assert len(await answer.read()) == len(CHAT_REPLY)

    clients: dict[str, Client] = {"lean": lean_call, "aiohttp": aiohttp_call}
    results: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for round_ in range(rounds):
            order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
            for name in order:
                cpu = await _drive(clients[name], calls, concurrency)
                results[name].append(cpu / calls * 1e6)
    finally:
        await lean.aclose()
        await session.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.client_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per client per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the upstream's process
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    last = max(os.sched_getaffinity(0))
    if last:
        os.sched_setaffinity(0, {0})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, "-m", "bench.client_cost", "--serve", str(port)]
    upstream = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        if last:
            os.sched_setaffinity(upstream.pid, {last})
        assert upstream.stdout is not None
        assert upstream.stdout.readline().strip() == "ready"
        results = uvloop.run(
            _measure(f"http://127.0.0.1:{port}", args.calls, args.concurrency, args.rounds)
        )
    finally:
        upstream.terminate()
        upstream.wait()
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, values in results.items():
        rounded = ", ".join(f"{value:.1f}" for value in values)
        print(f"{name:8} CPU µs/call: median {medians[name]:.1f} (rounds: {rounded})")
    print(f"aiohttp / lean: {medians['aiohttp'] / medians['lean']:.2f}x")


if __name__ == "__main__":
    main()
