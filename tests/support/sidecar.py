"""Run the real ``llm-sidecar`` as a subprocess, the way an operator would.

``SidecarProcess`` starts ``python -m proxy serve`` on free ports with a private
SQLite repository, waits for ``/readyz``, and offers the CLI for tenants and users.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import free_port  # one port picker for the benchmark, the soak and the tests
from tests.support import leak_scan

STARTUP_TIMEOUT_SECONDS = 20.0
PROXY_VARIABLES = frozenset({"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY"})
"""Stripped from the inherited environment (either case); tests set them in ``env``."""


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback only
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        text: str = response.read().decode()
        return text


@dataclass
class SidecarProcess:
    """One sidecar subprocess; ``env`` adds to/overrides the base environment."""

    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def environment(self) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LLM_SIDECAR_", "OTEL_", "OPENAI_", "GROQ_", "ANTHROPIC_"))
            and k.upper() not in PROXY_VARIABLES  # a developer's proxy must not apply
        }
        base.update(
            {
                "LLM_SIDECAR_PORT": str(self.port),
                "LLM_SIDECAR_ADMIN_HOST": "127.0.0.1",
                "LLM_SIDECAR_ADMIN_PORT": str(self.admin_port),
                "LLM_SIDECAR_DATABASE_URL": f"sqlite:///{self.workdir / 'users.db'}",
                "LLM_SIDECAR_DRAIN_SECONDS": "5",
                "OTEL_TRACES_EXPORTER": "none",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if leak_scan.LEDGER.span_sink_url:  # spans go where the secrets scan reads them
            base.update(
                {
                    "OTEL_TRACES_EXPORTER": "otlp",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": leak_scan.LEDGER.span_sink_url,
                    "OTEL_BSP_SCHEDULE_DELAY": "200",
                }
            )
        base.update(self.env)
        return base

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "proxy", *args],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"llm-sidecar {' '.join(args)} failed: {result.stderr}")
        return result

    def create_user(self, tenant: str, user: str, *tenant_flags: str) -> str:
        """Create the tenant (if new) and a user; return the user's new key."""
        existing = self.cli("tenants", "list", "--json").stdout
        if f'"{tenant}"' not in existing:
            self.cli("tenants", "create", tenant, *tenant_flags)
        created = self.cli("users", "create", user, "--tenant", tenant)
        key = created.stdout.strip().splitlines()[-1]
        leak_scan.add_secret(key)
        return key

    def start(self) -> SidecarProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"sidecar-{self.port}.log"
        leak_scan.add_file(self.log_path)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve"],
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"sidecar exited at start:\n{self.logs()}")
            if http_status(self.admin_url + "/readyz") == 200:
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"sidecar not ready in time:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self._keep_last_metrics()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def _keep_last_metrics(self) -> None:
        """Save a last ``/metrics`` scrape for the secrets scan (the process may be wedged)."""
        try:
            text = http_get(self.admin_url + "/metrics")
        except OSError:
            return
        leak_scan.add_output(f"metrics of sidecar {self.port}", text.encode())
