"""A Redis Cluster node behind LLM_SIDECAR_REDIS_URL fails clearly, not as a flaky Redis.

No cluster runs here, so the node is a socket server started by the test that speaks
just enough RESP: the connection handshake (``HELLO 3``, ``CLIENT SETINFO``), then a
cluster redirect (or ``CLUSTERDOWN``, ``TRYAGAIN``) to the bucket script, as a real node
does for a slot it does not own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Literal

import pytest
from structlog.testing import capture_logs

from proxy.adapters.buckets_redis import RedisRateLimiter
from proxy.core.errors import ServiceUnavailable
from proxy.core.limiter import InProcessRateLimiter, LocalReservation
from proxy.entrypoints.cli import main
from tests.support.fakes import FakeCaller


class FakeClusterNode:
    """Answers every keyed command (EVALSHA, EVAL) with ``reply``, anything else with OK."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.scripts = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> FakeClusterNode:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while command := await _read_command(reader):
                name = command[0].upper()
                if name in (b"EVALSHA", b"EVAL"):
                    self.scripts += 1
                    writer.write(b"-" + self.reply + b"\r\n")
                elif name == b"HELLO":  # redis-py speaks RESP3: a map naming the protocol
                    writer.write(b"%1\r\n+proto\r\n:3\r\n")
                else:
                    writer.write(b"+OK\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def _read_command(reader: asyncio.StreamReader) -> list[bytes]:
    """One RESP array of bulk strings (what redis-py sends), or [] at end of stream."""
    header = await reader.readline()
    if not header:
        return []
    assert header.startswith(b"*"), header
    parts = []
    for _ in range(int(header[1:])):
        length = int((await reader.readline())[1:])
        parts.append((await reader.readexactly(length + 2))[:-2])
    return parts


@pytest.fixture(
    params=[
        b"MOVED 3999 127.0.0.1:7001",
        b"ASK 3999 127.0.0.1:7001",
        b"CLUSTERDOWN The cluster is down",
        b"TRYAGAIN Multiple keys request during rehashing of slot",
    ]
)
async def node(request: pytest.FixtureRequest) -> AsyncIterator[FakeClusterNode]:
    server = await FakeClusterNode(request.param).start()
    yield server
    await server.stop()


def _limiter(
    node: FakeClusterNode, mode: Literal["open", "closed"], errors: list[int]
) -> RedisRateLimiter:
    return RedisRateLimiter(
        f"redis://127.0.0.1:{node.port}/0",
        default_rpm=60,
        default_tpm=10_000,
        failure_mode=mode,
        fallback=InProcessRateLimiter(default_rpm=60, default_tpm=10_000),
        on_backend_error=lambda: errors.append(1),
        retry_seconds=0.0,  # probe on every request: the report must still come only once
    )


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_a_cluster_reply_is_named_once_and_handled_as_an_outage(
    node: FakeClusterNode, mode: Literal["open", "closed"]
) -> None:
    """A redirect logs one ``redis_cluster_unsupported`` error; requests follow the failure mode."""
    errors: list[int] = []
    limiter = _limiter(node, mode, errors)
    try:
        with capture_logs() as logs:
            for _ in range(3):
                if mode == "open":
                    assert isinstance(await limiter.admit(FakeCaller(), 10), LocalReservation)
                else:
                    with pytest.raises(ServiceUnavailable):
                        await limiter.admit(FakeCaller(), 10)
        assert node.scripts == 3  # each request really asked the node
        assert len(errors) == 3  # counted like any backend failure
        reports = [line for line in logs if line["event"] == "redis_cluster_unsupported"]
        assert len(reports) == 1
        assert reports[0]["log_level"] == "error"
        assert reports[0]["failure_mode"] == mode
        assert "standalone" in reports[0]["hint"]
    finally:
        await limiter.aclose()


def test_a_cluster_url_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``redis+cluster://`` stops the sidecar at start (exit 2), naming the variable only."""
    for name in list(os.environ):
        if name.startswith("LLM_SIDECAR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LLM_SIDECAR_REDIS_URL", "redis+cluster://:pw-s3cret@node1:7000")
    assert main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm-sidecar: LLM_SIDECAR_REDIS_URL: ")
    assert "pw-s3cret" not in err
