"""The fault matrix: every upstream fault mode through an in-process sidecar, one row each.

Each row asserts what the client gets (exact status and error shape, or a cut body),
the breaker state afterwards, the metrics (the request counted under its code, nothing
left in flight), and that the next normal request succeeds. The breaker opens on a
single failure here (threshold 1, short cooldown), so "closed" afterwards proves the
fault was not counted and "open" proves it was. README.md's reliability section
shows this table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from tests.e2e.conftest import start_in_process
from tests.support import leak_scan
from tests.support.fake_upstream import FakeUpstream
from tests.support.inprocess import ThreadedSidecar
from tests.support.metrics import Samples, breaker_state, scrape, value
from tests.support.sidecar import free_port

COOLDOWN_SECONDS = 0.5
READ_TIMEOUT_SECONDS = 1.0
CUT = 0
"""Expected "status" of a response whose head came and whose body was cut short."""


@dataclass(frozen=True)
class Fault:
    mode: str
    model: str
    status: int  # what the client sees; CUT for a 200 head and a broken body
    code: str | None  # error.code of the body; None for a success or a cut body
    logged: int  # status of the access line and of requests_total's code label
    breaker: str  # the upstream's breaker state right after
    stream: bool = False
    upstream: str = "openai"


FAULTS = [
    Fault("upstream 500", "fail-500", 500, "fake_500", 500, "open"),
    Fault("upstream 502", "fail-502", 502, "fake_502", 502, "open"),
    Fault("upstream 503", "fail-503", 503, "fake_503", 503, "open"),
    Fault("upstream 504", "fail-504", 504, "fake_504", 504, "open"),
    Fault("upstream 429 + retry-after-ms", "fail-429", 429, "fake_429", 429, "closed"),
    Fault(
        "connection refused", "gpt-test", 502, "upstream_unreachable", 502, "open", upstream="dead"
    ),
    Fault("accepts, never answers", "hang", 504, "upstream_timeout", 504, "open"),
    Fault("reset before the head", "reset", 502, "upstream_reset", 502, "open"),
    Fault("garbage instead of HTTP", "garbage", 502, "bad_gateway", 502, "open"),
    # A sized body up to 256 KiB is read whole before the head goes out: a clean 502.
    Fault("reset mid-body", "reset-mid-body", 502, "upstream_reset", 502, "open"),
    Fault("reset mid-stream", "reset-mid-stream", CUT, None, 502, "open", stream=True),
    Fault("SSE drips slowly", "drip", 200, None, 200, "closed", stream=True),
    Fault("gzip-encoded body", "gzip", 200, None, 200, "closed"),
]


@pytest.fixture(scope="module")
def sidecar(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ThreadedSidecar, str]]:
    process, key = start_in_process(
        tmp_path_factory.mktemp("faults"),
        fake_upstream,
        LLM_SIDECAR_UPSTREAMS__DEAD__BASE_URL=f"http://127.0.0.1:{free_port()}",
        LLM_SIDECAR_BREAKER_FAILURE_THRESHOLD="1",
        LLM_SIDECAR_BREAKER_COOLDOWN_SECONDS=str(COOLDOWN_SECONDS),
        LLM_SIDECAR_UPSTREAM_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT_SECONDS),
    )
    yield process, key
    assert process.stop(), process.logs()


async def _call(
    sidecar: ThreadedSidecar,
    key: str,
    model: str,
    *,
    stream: bool = False,
    upstream: str = "openai",
) -> tuple[int, dict[str, str], bytes]:
    """(status or CUT, headers, body) of one chat completion, read to its end."""
    payload = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession(auto_decompress=True) as session,
        session.post(
            f"{sidecar.url}/{upstream}/v1/chat/completions",
            data=orjson.dumps(payload),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        ) as response,
    ):
        try:
            body = await response.read()
        except aiohttp.ClientPayloadError:
            assert response.status == 200
            return CUT, dict(response.headers), b""
        leak_scan.add_output("fault matrix answer", body)
        return response.status, dict(response.headers), body


async def _recovered(sidecar: ThreadedSidecar, key: str) -> None:
    """Start from closed breakers even if an earlier row failed half-way."""
    for upstream in ("openai", "dead"):
        if breaker_state(scrape(sidecar.admin_url), upstream) != "closed":
            await asyncio.sleep(COOLDOWN_SECONDS + 0.1)
    if breaker_state(scrape(sidecar.admin_url), "openai") != "closed":
        await _call(sidecar, key, "gpt-test")  # the half-open probe


def _requests(samples: Samples, upstream: str, code: int) -> float:
    return value(samples, "llm_sidecar_requests_total", upstream=upstream, code=str(code))


@pytest.mark.parametrize("fault", FAULTS, ids=[f.mode for f in FAULTS])
async def test_fault(fault: Fault, sidecar: tuple[ThreadedSidecar, str]) -> None:
    """The client's answer, the breaker, the metrics and the next request, for one fault."""
    process, key = sidecar
    await _recovered(process, key)
    before = scrape(process.admin_url)
    started = time.monotonic()
    status, headers, body = await _call(
        process, key, fault.model, stream=fault.stream, upstream=fault.upstream
    )
    elapsed = time.monotonic() - started
    after = scrape(process.admin_url)

    assert status == fault.status, body
    assert headers.get("X-Correlation-ID"), "every answer carries the correlation id"
    if fault.code is not None:
        error: dict[str, Any] = orjson.loads(body)["error"]
        assert error["code"] == fault.code
        if not fault.code.startswith("fake_"):  # the sidecar's own answer: OpenAI's shape
            assert set(error) == {"message", "type", "param", "code"}
    if fault.model == "fail-429":
        assert headers["retry-after-ms"] == "10", "the upstream's retry hint reaches the caller"
    if fault.status == 200:
        reply = body.decode()
        assert ("[DONE]" in reply) if fault.stream else ("Hello from the fake" in reply)
    if fault.model == "gzip":
        tokens = value(after, "llm_sidecar_tokens_total", type="input") - value(
            before, "llm_sidecar_tokens_total", type="input"
        )
        assert tokens == 11, "usage is read from a gzip-encoded body"
    assert elapsed < READ_TIMEOUT_SECONDS + 1.5, "no fault makes the client wait past the timeout"

    assert (
        _requests(after, fault.upstream, fault.logged)
        - _requests(before, fault.upstream, fault.logged)
        == 1
    )
    assert value(after, "llm_sidecar_inflight_requests") == 0
    assert breaker_state(after, fault.upstream) == fault.breaker
    if fault.breaker == "open":
        await asyncio.sleep(COOLDOWN_SECONDS + 0.1)

    status, _, _ = await _call(process, key, "gpt-test")
    assert status == 200, "the next normal request succeeds"
    assert breaker_state(scrape(process.admin_url), "openai") == "closed"


async def test_client_disconnect_row(sidecar: tuple[ThreadedSidecar, str]) -> None:
    """A caller leaving mid-stream: logged 499, no breaker failure, nothing left in flight."""
    process, key = sidecar
    await _recovered(process, key)
    before = scrape(process.admin_url)
    body = {"model": "drip", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{process.url}/openai/v1/chat/completions",
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        assert response.status == 200
        await response.content.readany()
        response.close()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        after = scrape(process.admin_url)
        if _requests(after, "openai", 499) > _requests(before, "openai", 499):
            break
        await asyncio.sleep(0.05)
    assert _requests(after, "openai", 499) - _requests(before, "openai", 499) == 1
    assert value(after, "llm_sidecar_inflight_requests") == 0
    assert breaker_state(after, "openai") == "closed"
    status, _, _ = await _call(process, key, "gpt-test")
    assert status == 200
