"""SSE probes: time to first byte and per-chunk delay, and many slow streams held at once.

The paced fake upstream (``tests/support/fake_upstream_bench.py``, started by
``bench/stage.py``) stamps each chunk with ``bench_sent_ns`` (CLOCK_MONOTONIC) just before
writing it; the client notes when it reads the chunk. The same delay measured direct is
subtracted from the one measured through a proxy to get what the proxy adds.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from bench.payloads import request_body

_STAMP = re.compile(rb'"bench_sent_ns":(\d+)')
_BODY = request_body(stream=True)


@dataclass(slots=True)
class ProbeResult:
    """Microsecond samples from one probe run; ``streams`` counts those received whole."""

    ttfb_us: list[float] = field(default_factory=list)
    chunk_delay_us: list[float] = field(default_factory=list)
    streams: int = 0
    errors: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        self.errors += 1
        self.failures[why] = self.failures.get(why, 0) + 1


def _headers(key: str, chunks: int, gap_ms: float) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "X-Bench-Chunks": str(chunks),
        "X-Bench-Gap-Ms": str(gap_ms),
    }
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


async def _one_stream(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    chunks: int,
    result: ProbeResult,
) -> None:
    started = time.monotonic_ns()
    seen = 0
    first = True
    buffer = b""
    try:
        async with session.post(url, data=_BODY, headers=headers) as response:
            if response.status != 200:
                await response.read()
                result.fail(f"HTTP {response.status}")
                return
            async for data in response.content.iter_any():
                now = time.monotonic_ns()
                if first:
                    first = False
                    result.ttfb_us.append((now - started) / 1e3)
                buffer += data
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    stamp = _STAMP.search(event)
                    if stamp:
                        seen += 1
                        result.chunk_delay_us.append((now - int(stamp.group(1))) / 1e3)
    except (TimeoutError, aiohttp.ClientError) as exc:
        result.fail(type(exc).__name__)
        return
    if seen == chunks:
        result.streams += 1
    else:
        result.fail("short stream")


async def probe(
    url: str,
    key: str = "",
    *,
    streams: int = 200,
    concurrency: int = 8,
    chunks: int = 8,
    gap_ms: float = 5.0,
) -> ProbeResult:
    """``streams`` paced SSE streams, ``concurrency`` at a time."""
    result = ProbeResult()
    headers = _headers(key, chunks, gap_ms)
    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def gated() -> None:
        async with gate:
            await _one_stream(session, url, headers, chunks, result)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(gated() for _ in range(streams)))
    return result


@dataclass(slots=True)
class HoldResult:
    """Many slow streams at once: how many finished whole, and the peak RSS seen."""

    streams: int
    completed: int
    errors: int
    peak_rss_mib: float
    seconds: float
    failures: dict[str, int] = field(default_factory=dict)


async def hold(
    url: str,
    key: str,
    rss_mib: Callable[[], float],
    *,
    streams: int = 2000,
    chunks: int = 6,
    gap_ms: float = 1000.0,
) -> HoldResult:
    """Open ``streams`` slow SSE streams at once; sample the proxy's RSS while they run."""
    result = ProbeResult()
    headers = _headers(key, chunks, gap_ms)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    connector = aiohttp.TCPConnector(limit=0)
    peak = rss_mib()
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [
            asyncio.ensure_future(_one_stream(session, url, headers, chunks, result))
            for _ in range(streams)
        ]
        while not all(task.done() for task in tasks):
            peak = max(peak, rss_mib())
            await asyncio.sleep(0.25)
        await asyncio.gather(*tasks)
    return HoldResult(
        streams=streams,
        completed=result.streams,
        errors=result.errors,
        peak_rss_mib=max(peak, rss_mib()),
        seconds=time.monotonic() - started,
        failures=dict(result.failures),
    )
