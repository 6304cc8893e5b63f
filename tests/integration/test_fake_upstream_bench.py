"""The fake upstream's bench mode answers the bytes the benchmark relies on (bench/payloads.py).

In process (``FakeUpstream(bench=True)``) for the replies, and once as the subprocess
``bench/stage.py`` starts, from the repo root as ``python -m bench`` runs.
"""

from __future__ import annotations

import itertools
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.payloads import CHAT_REPLY, request_body, sse_chunk, sse_usage_tail, static_sse_body
from bench.procs import Child, free_port
from bench.stage import FAKE_UPSTREAM
from bench.stream_probe import probe
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream_bench import PACED_WORDS

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_fake() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(bench=True).start()
    yield fake
    fake.stop()


def _post(url: str, body: bytes, **headers: str) -> tuple[str, bytes]:
    request = urllib.request.Request(url, body, headers, method="POST")  # noqa: S310 - loopback
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        return response.headers["Content-Type"], response.read()


def test_any_request_gets_the_fixed_chat_reply_and_none_is_recorded(
    bench_fake: FakeUpstream,
) -> None:
    for path in ("/v1/chat/completions", "/", "/v1/traces"):
        kind, body = _post(bench_fake.url + path, request_body(stream=False))
        assert (kind, body) == ("application/json", CHAT_REPLY)
    assert bench_fake.received == []
    assert bench_fake.spans == []


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (request_body(stream=False), {"X-Bench-Stream": "1"}),  # as wrk and nginx ask
        (request_body(stream=True), {}),  # as LiteLLM asks
    ],
)
def test_a_streaming_request_gets_the_static_sse_body(
    bench_fake: FakeUpstream, body: bytes, headers: dict[str, str]
) -> None:
    kind, answer = _post(bench_fake.url + "/v1/chat/completions", body, **headers)
    assert (kind, answer) == ("text/event-stream", static_sse_body())


def test_paced_chunks_are_stamped_just_before_they_are_written(bench_fake: FakeUpstream) -> None:
    before = time.monotonic_ns()
    headers = {"X-Bench-Stream": "1", "X-Bench-Chunks": "3", "X-Bench-Gap-Ms": "5"}
    kind, answer = _post(bench_fake.url + "/", request_body(stream=False), **headers)
    after = time.monotonic_ns()
    stamps = [int(stamp) for stamp in re.findall(rb'"bench_sent_ns":(\d+)', answer)]
    expected = [sse_chunk(i, PACED_WORDS[i], bench_sent_ns=s) for i, s in enumerate(stamps)]
    assert kind == "text/event-stream"
    assert answer == b"".join(expected) + sse_usage_tail()
    assert len(stamps) == 3
    assert before <= stamps[0] < stamps[1] < stamps[2] <= after
    assert min(b - a for a, b in itertools.pairwise(stamps)) >= 4_000_000  # 5 ms apart


async def test_the_bench_probe_reads_every_stamp(bench_fake: FakeUpstream) -> None:
    result = await probe(bench_fake.url + "/v1/chat/completions", streams=6, chunks=4, gap_ms=1)
    assert (result.streams, result.errors) == (6, 0)
    assert len(result.chunk_delay_us) == 24


def test_the_stage_command_serves_bench_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)  # where `python -m bench` runs, and its children with it
    port = free_port()
    child = Child("fake", [*FAKE_UPSTREAM, "--port", str(port)], tmp_path / "fake.log").start()
    try:
        child.wait_ready(f"http://127.0.0.1:{port}/", timeout=30)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        assert _post(url, request_body(stream=False))[1] == CHAT_REPLY
        assert _post(url, b"{}", **{"X-Bench-Stream": "1"})[1] == static_sse_body()
    finally:
        child.stop()
    assert child.process is not None
    assert child.process.returncode == 0
    assert (tmp_path / "fake.log").read_bytes() == b""  # no access log, nothing printed
