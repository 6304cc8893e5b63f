"""A running sidecar subprocess (module-scoped) pointed at the fake upstream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import sidecar_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.sidecar import SidecarProcess


@dataclass(frozen=True)
class RunningSidecar:
    process: SidecarProcess
    key: str

    @property
    def url(self) -> str:
        return self.process.url


@pytest.fixture(scope="module")
def sidecar(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSidecar]:
    process = SidecarProcess(
        tmp_path_factory.mktemp("e2e"),
        env=sidecar_env(
            fake_upstream,
            LLM_SIDECAR_DEFAULT_RPM="100000",
            LLM_SIDECAR_MAX_BODY_BYTES=str(256 * 1024),
        ),
    )
    process.workdir.mkdir(parents=True, exist_ok=True)
    key = process.create_user("acme", "alice", "--tpm", "10000000")
    process.start()
    yield RunningSidecar(process, key)
    assert process.stop() == 0, process.logs()


def start_sidecar(workdir: Path, fake: FakeUpstream, **env: str) -> tuple[SidecarProcess, str]:
    """A started sidecar on the fake with ``env`` on top, and a key of a roomy tenant."""
    process = SidecarProcess(
        workdir, env=sidecar_env(fake, LLM_SIDECAR_DEFAULT_RPM="100000", **env)
    )
    process.workdir.mkdir(parents=True, exist_ok=True)
    key = process.create_user("acme", "alice", "--tpm", "100000000")
    process.start()
    return process, key
