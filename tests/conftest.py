"""Fixtures shared by every test layer: the fake upstream and running sidecars."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_upstream import FakeUpstream

OPENAI_PROVIDER_KEY = "sk-provider-openai-0123456789SECRET"
GROQ_PROVIDER_KEY = "gsk_provider_groq_0123456789SECRET"


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    """The session's fake upstream, with its request log cleared for this test."""
    fake_upstream.reset()
    return fake_upstream


def sidecar_env(fake: FakeUpstream, **extra: str) -> dict[str, str]:
    """Settings pointing both built-in upstreams at the fake."""
    return {
        "LLM_SIDECAR_UPSTREAMS__OPENAI__BASE_URL": fake.url,
        "LLM_SIDECAR_UPSTREAMS__OPENAI__API_KEY": OPENAI_PROVIDER_KEY,
        "LLM_SIDECAR_UPSTREAMS__GROQ__BASE_URL": fake.url,
        "LLM_SIDECAR_UPSTREAMS__GROQ__API_KEY": GROQ_PROVIDER_KEY,
        "LLM_SIDECAR_UPSTREAM_READ_TIMEOUT_SECONDS": "1.5",
        "LLM_SIDECAR_UPSTREAM_CONNECT_TIMEOUT_SECONDS": "1",
        **extra,
    }


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sidecars")
