"""Graceful shutdown of a running sidecar: SIGTERM during live streams, and a second signal."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.e2e.conftest import start_sidecar
from tests.support.fake_upstream import DRIP_SECONDS, STREAM_WORDS, FakeUpstream
from tests.support.sidecar import SidecarProcess, http_status

PRESTOP_SECONDS = 1.0
STREAMS = 50
STREAM_SECONDS = DRIP_SECONDS * (len(STREAM_WORDS) - 1)  # outlives the pre-stop window


async def _stream(session: aiohttp.ClientSession, url: str, key: str, first: asyncio.Event) -> str:
    """One slow chat stream, read to its end; ``first`` is set at its first chunk."""
    body = {"model": "drip", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with session.post(
        url + "/openai/v1/chat/completions",
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    ) as response:
        assert response.status == 200
        text = (await response.content.readany()).decode()
        first.set()
        return text + (await response.read()).decode()


async def _new_connection_status(sidecar: SidecarProcess, key: str) -> int | str:
    """Status of a normal request on a brand-new connection, or ``"refused"``."""
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
            session.post(
                sidecar.url + "/openai/v1/chat/completions",
                json={"model": "gpt-test", "messages": []},
                headers={"Authorization": f"Bearer {key}"},
            ) as response,
        ):
            await response.read()
            return response.status
    except aiohttp.ClientConnectorError:
        return "refused"


async def test_sigterm_during_50_streams(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    """/readyz 503 at once; new requests served in the pre-stop window, refused after it;
    all 50 streams complete; exit 0 within the drain time."""
    process, key = await asyncio.to_thread(
        start_sidecar,
        tmp_path,
        fake_upstream,
        LLM_SIDECAR_PRESTOP_SECONDS=str(PRESTOP_SECONDS),
        LLM_SIDECAR_DRAIN_SECONDS="10",
    )
    assert process.process is not None
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            started = [asyncio.Event() for _ in range(STREAMS)]
            streams = [
                asyncio.ensure_future(_stream(session, process.url, key, first))
                for first in started
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 10)

            signalled = time.monotonic()
            process.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            assert await asyncio.to_thread(http_status, process.admin_url + "/readyz") == 503
            assert await asyncio.to_thread(http_status, process.admin_url + "/healthz") == 200
            assert await _new_connection_status(process, key) == 200, "pre-stop still serves"

            await asyncio.sleep(PRESTOP_SECONDS + 0.2 - (time.monotonic() - signalled))
            assert await _new_connection_status(process, key) == "refused"

            replies = await asyncio.wait_for(asyncio.gather(*streams), 10)
        expected = "".join(STREAM_WORDS)
        for reply in replies:
            words = [
                orjson.loads(line[6:])["choices"][0]["delta"]["content"]
                for line in reply.splitlines()
                if line.startswith("data: {") and '"content"' in line
            ]
            assert "".join(words) == expected
            assert reply.rstrip().endswith("data: [DONE]")
        code = await asyncio.to_thread(process.process.wait, 10)
        elapsed = time.monotonic() - signalled
    finally:
        process.stop()
    assert code == 0, process.logs()
    assert elapsed < PRESTOP_SECONDS + STREAM_SECONDS + 2, "exits as soon as the streams end"


async def test_second_signal_stops_at_once(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    """A second SIGTERM during a long pre-stop window and a live stream exits (code 1) at once."""
    process, key = await asyncio.to_thread(
        start_sidecar,
        tmp_path,
        fake_upstream,
        LLM_SIDECAR_PRESTOP_SECONDS="30",
        LLM_SIDECAR_DRAIN_SECONDS="30",
    )
    assert process.process is not None
    try:
        async with aiohttp.ClientSession() as session:
            first = asyncio.Event()
            stream = asyncio.ensure_future(_stream(session, process.url, key, first))
            await asyncio.wait_for(first.wait(), 10)
            process.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            assert process.process.poll() is None, "the first signal starts a graceful stop"
            signalled = time.monotonic()
            process.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(process.process.wait, 10)
            elapsed = time.monotonic() - signalled
            with pytest.raises(aiohttp.ClientError):
                await stream
    finally:
        process.stop()
    assert code == 1
    assert elapsed < 1.5, f"took {elapsed:.2f} s"
    assert '"stopped_at_once"' in process.logs()
