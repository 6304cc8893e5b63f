"""A real Prometheus server for tests: own port, own config, own storage, stopped at the end.

Uses the Debian package's ``/usr/bin/prometheus`` and ``promtool`` (``make test`` installs
them where missing; this helper never installs anything)::

    with running_prometheus(["127.0.0.1:9464"]) as prom:
        rows = await prom.wait_for('up{job="llm-sidecar"} == 1')

or, in a test module, ``start_prometheus = make_prometheus_fixture()`` and then
``prom = start_prometheus(["127.0.0.1:%d" % port])`` inside the test (stopped at teardown).
Mark such tests ``@requires_prometheus``: they skip when the binary is missing, unless
``CI`` is set, where a missing binary must fail loudly instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.sidecar import free_port

Row = dict[str, Any]
"""One result of an instant query: ``{"metric": {label: value}, "value": [ts, "1"]}``."""


def _find(tool: str) -> str | None:
    return shutil.which(tool) or (f"/usr/bin/{tool}" if Path(f"/usr/bin/{tool}").exists() else None)


PROMETHEUS_BIN = _find("prometheus")
PROMTOOL_BIN = _find("promtool")

requires_prometheus = pytest.mark.skipif(
    PROMETHEUS_BIN is None and not os.environ.get("CI"),
    reason="prometheus is not installed (make test installs the Debian package)",
)


class PrometheusServer:
    """A started Prometheus; ``url`` is its HTTP API origin."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def query(self, expr: str) -> list[Row]:
        """Instant query over the HTTP API (blocking; prefer ``aquery`` inside a loop)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own loopback URL
            return _result(json.load(response), expr)

    async def aquery(self, expr: str) -> list[Row]:
        """Instant query without blocking the event loop (which may be serving the target)."""
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{self.url}/api/v1/query", params={"query": expr}) as response,
        ):
            return _result(await response.json(), expr)

    async def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[Row]], bool] = bool,
        *,
        within: float = 15.0,
        interval: float = 0.25,
    ) -> list[Row]:
        """Poll ``expr`` until ``predicate(rows)`` holds; fail with the last rows otherwise."""
        deadline = time.monotonic() + within
        rows: list[Row] = []
        while True:
            rows = await self.aquery(expr)
            if predicate(rows):
                return rows
            if time.monotonic() >= deadline:
                targets = await self.aquery("up")
                raise AssertionError(
                    f"{expr!r} not satisfied within {within} s; last result {rows}; "
                    f"up={targets}\n{self.log_tail()}"
                )
            await asyncio.sleep(interval)


def _result(payload: Any, expr: str) -> list[Row]:
    if payload.get("status") != "success":
        raise AssertionError(f"Prometheus rejected {expr!r}: {payload}")
    data = payload["data"]
    if data["resultType"] != "vector":
        raise AssertionError(f"{expr!r} gave a {data['resultType']}, expected an instant vector")
    return list(data["result"])


def scrape_config(targets: Sequence[str], scrape_interval: str = "1s") -> dict[str, Any]:
    """The whole prometheus.yml (JSON is YAML): one job scraping ``targets``' /metrics."""
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": "llm-sidecar",
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }


@contextmanager
def running_prometheus(
    targets: Sequence[str],
    *,
    scrape_interval: str = "1s",
    startup_timeout: float = 30.0,
) -> Iterator[PrometheusServer]:
    """Start Prometheus on a free loopback port with temp config and storage; stop it after."""
    if PROMETHEUS_BIN is None:
        raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
    with tempfile.TemporaryDirectory(prefix="llm-sidecar-prometheus-") as tmp:
        root = Path(tmp)
        config = root / "prometheus.yml"
        config.write_text(json.dumps(scrape_config(targets, scrape_interval)))
        log_path = root / "prometheus.log"
        for attempt in range(3):  # a free port can be taken between probe and bind
            port = free_port()
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [
                        PROMETHEUS_BIN,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={root / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--storage.tsdb.retention.time=1h",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            server = PrometheusServer(f"http://127.0.0.1:{port}", process, log_path)
            try:
                if _wait_ready(server, startup_timeout):
                    break
                _stop(process)
                if attempt == 2:
                    raise RuntimeError(f"prometheus did not start:\n{server.log_tail()}")
            except BaseException:
                _stop(process)
                raise
        try:
            yield server
        finally:
            _stop(process)


def _wait_ready(server: PrometheusServer, timeout: float) -> bool:
    """True once /-/ready answers 200; False if the process died (e.g. port taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as response:  # noqa: S310 - own loopback URL
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"prometheus not ready within {timeout} s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_prometheus_fixture(
    name: str | None = None,
) -> Any:
    """A function-scoped fixture yielding ``start(targets) -> PrometheusServer``.

    Every server it started is stopped at teardown. Assign it in a test module or conftest:
    ``start_prometheus = make_prometheus_fixture()``.
    """

    @pytest.fixture(name=name)
    def _fixture() -> Iterator[Callable[..., PrometheusServer]]:
        with ExitStack() as stack:

            def start(targets: Sequence[str], **kwargs: Any) -> PrometheusServer:
                return stack.enter_context(running_prometheus(targets, **kwargs))

            yield start

    return _fixture


def promtool_check_metrics(text: str) -> None:
    """Lint a /metrics exposition with ``promtool check metrics``; raise with its output."""
    if PROMTOOL_BIN is None:
        raise RuntimeError("promtool is not installed (apt-get install prometheus)")
    done = subprocess.run(
        [PROMTOOL_BIN, "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        raise AssertionError(f"promtool check metrics failed ({done.returncode}):\n{output}")
