"""The e2e sidecars pointed at the fake upstream: in-process (threaded) or a subprocess.

A test that needs nothing of a real process (signals, exit codes, its stdout, its RSS,
several processes sharing a backend, settings only the environment can give) runs
against a :class:`~tests.support.inprocess.ThreadedSidecar`: the same settings, sockets
and log lines, without an interpreter start and CLI runs per sidecar.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import sidecar_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.inprocess import ThreadedSidecar
from tests.support.sidecar import SidecarProcess


@dataclass(frozen=True)
class RunningSidecar:
    process: ThreadedSidecar
    key: str

    @property
    def url(self) -> str:
        return self.process.url


@pytest.fixture(scope="module")
def sidecar(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSidecar]:
    process = ThreadedSidecar(
        tmp_path_factory.mktemp("e2e"),
        env=sidecar_env(
            fake_upstream,
            LLM_SIDECAR_DEFAULT_RPM="100000",
            LLM_SIDECAR_MAX_BODY_BYTES=str(256 * 1024),
        ),
    ).start()
    key = process.create_user("acme", "alice", tpm=10_000_000)
    yield RunningSidecar(process, key)
    assert process.stop(), process.logs()


def start_sidecar(workdir: Path, fake: FakeUpstream, **env: str) -> tuple[SidecarProcess, str]:
    """A started sidecar on the fake with ``env`` on top, and a key of a roomy tenant."""
    process = SidecarProcess(
        workdir, env=sidecar_env(fake, LLM_SIDECAR_DEFAULT_RPM="100000", **env)
    )
    process.workdir.mkdir(parents=True, exist_ok=True)
    key = process.create_user("acme", "alice", "--tpm", "100000000")
    process.start()
    return process, key


def start_in_process(workdir: Path, fake: FakeUpstream, **env: str) -> tuple[ThreadedSidecar, str]:
    """``start_sidecar``'s sidecar, tenant and key, served in-process."""
    process = ThreadedSidecar(
        workdir, env=sidecar_env(fake, LLM_SIDECAR_DEFAULT_RPM="100000", **env)
    ).start()
    return process, process.create_user("acme", "alice", tpm=100_000_000)
