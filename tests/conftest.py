"""Fixtures shared by every test layer: the fake upstream and running sidecars."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import leak_scan
from tests.support.fake_upstream import FakeUpstream
from tests.support.sidecar import PROXY_VARIABLES

OPENAI_PROVIDER_KEY = "sk-provider-openai-0123456789SECRET"
GROQ_PROVIDER_KEY = "gsk_provider_groq_0123456789SECRET"
leak_scan.add_secret(OPENAI_PROVIDER_KEY)
leak_scan.add_secret(GROQ_PROVIDER_KEY)


@pytest.fixture(scope="session", autouse=True)
def no_developer_proxy() -> Iterator[None]:
    """A developer's HTTPS_PROXY/NO_PROXY (either case) must not steer in-process sidecars."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper() in PROXY_VARIABLES:
                patch.delenv(name)
        yield


@pytest.fixture(scope="session", autouse=True)
def span_sink() -> Iterator[None]:
    """One OTLP/HTTP sink for every sidecar (subprocess or threaded), so the secrets scan
    reads all spans."""
    sink = FakeUpstream().start()
    leak_scan.LEDGER.span_sink_url = sink.url
    yield
    leak_scan.LEDGER.span_sink_url = None
    sink.stop()
    for index, export in enumerate(sink.spans):
        leak_scan.add_output(f"span export #{index}", export)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any key, digest or prompt marker came out of a sidecar."""
    found, scanned = leak_scan.findings()
    session.config.stash[_SCAN_RESULT] = (found, scanned)
    if found and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    found, scanned = terminalreporter.config.stash.get(_SCAN_RESULT, ([], 0))
    ledger = leak_scan.LEDGER
    outputs = len(ledger.files) + len(ledger.blobs)
    terminalreporter.write_line(
        f"secrets scan: {outputs} outputs ({scanned:,} bytes: logs, metrics, spans, error "
        f"bodies) against {len(ledger.secrets)} secrets: {len(found)} found"
    )
    for place in found:
        terminalreporter.write_line(f"  LEAK {place}", red=True)


_SCAN_RESULT = pytest.StashKey[tuple[list[str], int]]()


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
