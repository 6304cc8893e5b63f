"""Tenant buckets through running sidecars: shared in Redis, failure modes, SDK retries.

Two processes share one Redis budget; the single-sidecar tests run in-process.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import redis

from tests.conftest import sidecar_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.inprocess import ThreadedSidecar
from tests.support.sidecar import SidecarProcess, http_get

REDIS_URL = "redis://127.0.0.1:6379/0"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        if os.environ.get("CI"):
            raise
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    yield client
    client.close()


def _call(
    sidecar: SidecarProcess | ThreadedSidecar, key: str, *, retries: int = 0
) -> openai.APIStatusError | None:
    with openai.OpenAI(
        base_url=f"{sidecar.url}/openai/v1", api_key=key, max_retries=retries
    ) as client:
        try:
            client.chat.completions.create(model="gpt-test", messages=MESSAGES, max_tokens=10)
        except openai.APIStatusError as exc:
            return exc
    return None


@pytest.mark.redis
def test_two_sidecars_share_one_budget(
    fake_upstream: FakeUpstream, tmp_path: Path, redis_client: redis.Redis
) -> None:
    """Requests spread over two sidecars are limited to the tenant's rpm in total."""
    tenant = f"shared-{uuid.uuid4().hex[:8]}"
    database = f"sqlite:///{tmp_path / 'users.db'}"
    env = sidecar_env(
        fake_upstream, LLM_SIDECAR_REDIS_URL=REDIS_URL, LLM_SIDECAR_DATABASE_URL=database
    )
    first = SidecarProcess(tmp_path / "a", env=env)
    second = SidecarProcess(tmp_path / "b", env=env)
    first.workdir.mkdir()
    second.workdir.mkdir()
    key = first.create_user(tenant, "user", "--rpm", "10", "--tpm", "1000000")
    first.start()
    try:
        second.start()  # inside: a second that fails to start still stops the first
        outcomes = [_call(s, key) for _ in range(15) for s in (first, second)]
    finally:
        assert first.stop() == 0
        assert second.stop() == 0
        redis_client.delete(*redis_client.keys(f"llm-sidecar:{{{tenant}}}:*") or ["none"])
    admitted = outcomes.count(None)
    assert 10 <= admitted <= 11, admitted  # 10 in the bucket, at most one refilled meanwhile
    rejected = [o for o in outcomes if o is not None]
    assert {o.status_code for o in rejected} == {429}
    headers = rejected[-1].response.headers
    assert int(headers["retry-after"]) >= 1
    assert int(headers["retry-after-ms"]) > 0
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-tokens"] == "1000000"
    assert rejected[-1].body["code"] == "rate_limit_exceeded"  # type: ignore[index]


@pytest.mark.parametrize(("mode", "expected"), [("open", None), ("closed", 503)])
def test_unreachable_redis_follows_failure_mode(
    fake_upstream: FakeUpstream, tmp_path: Path, mode: str, expected: int | None
) -> None:
    """Redis at a dead port: `open` falls back to in-process buckets, `closed` answers 503."""
    sidecar = ThreadedSidecar(
        tmp_path,
        env=sidecar_env(
            fake_upstream,
            LLM_SIDECAR_REDIS_URL="redis://127.0.0.1:1/0",
            LLM_SIDECAR_RATE_LIMIT_FAILURE_MODE=mode,
        ),
    ).start()
    try:
        key = sidecar.create_user("acme", "user")
        outcome = _call(sidecar, key)
        assert (outcome.status_code if outcome else None) == expected
        metrics = http_get(sidecar.admin_url + "/metrics")
        assert "llm_sidecar_rate_limiter_backend_errors_total 0.0" not in metrics
    finally:
        assert sidecar.stop()


def test_openai_sdk_retries_after_retry_after(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    """A limited tenant's 429 makes the SDK wait Retry-After and then succeed by itself."""
    fake_upstream.reset()
    sidecar = ThreadedSidecar(tmp_path, env=sidecar_env(fake_upstream)).start()
    try:
        key = sidecar.create_user("slow", "user", rpm=60, burst=1)
        assert _call(sidecar, key) is None
        started = time.monotonic()
        assert _call(sidecar, key, retries=2) is None  # 429 first, then a retry that passes
        waited = time.monotonic() - started
    finally:
        assert sidecar.stop()
    assert 0.3 < waited < 5
    assert len(fake_upstream.received) == 2  # the rejected attempt never reached upstream
    log = sidecar.logs()
    assert '"status":429' in log
