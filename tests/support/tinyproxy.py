"""A real forward proxy for the egress tests: Debian's ``tinyproxy`` (1.11, BasicAuth).

Each test starts its own instance (``Tinyproxy.start``) on a free loopback port with its
own configuration and log; the log shows every request it was asked for (``requests``),
``CONNECT`` ones included, which is how tests prove a call went through it, or not.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.sidecar import free_port

BINARY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


def require_tinyproxy() -> None:
    """Skip (locally) when tinyproxy is missing; ``make system-deps`` installs it."""
    if not Path(BINARY).exists():
        pytest.skip("tinyproxy is not installed (apt-get install tinyproxy)")


@dataclass
class Tinyproxy:
    """One tinyproxy process; ``connect_ports`` limits CONNECT (none: any port)."""

    workdir: Path
    connect_ports: tuple[int, ...] = ()
    credentials: tuple[str, str] | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"tinyproxy-{self.port}.log"

    def url(self, *, userinfo: str | None = None) -> str:
        at = f"{userinfo}@" if userinfo is not None else ""
        return f"http://{at}127.0.0.1:{self.port}"

    def start(self) -> Tinyproxy:
        require_tinyproxy()
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Allow 127.0.0.1",
            "Timeout 60",
            f'LogFile "{self.log_path}"',
            "LogLevel Connect",
            "MaxClients 64",
            *(f"ConnectPort {port}" for port in self.connect_ports),
        ]
        if self.credentials is not None:
            lines.append(f"BasicAuth {self.credentials[0]} {self.credentials[1]}")
        conf = self.workdir / f"tinyproxy-{self.port}.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen(
            [BINARY, "-d", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise AssertionError("tinyproxy exited at start") from None
                time.sleep(0.05)
        self.stop()
        raise AssertionError("tinyproxy did not listen in time")

    def requests(self) -> list[str]:
        """The request lines it was sent, in order (``CONNECT localhost:443 HTTP/1.1``)."""
        if not self.log_path.exists():
            return []
        marker = "): "
        return [
            line.split(marker, 1)[1]
            for line in self.log_path.read_text().splitlines()
            if "Request (file descriptor" in line and marker in line
        ]

    def connects(self) -> list[str]:
        return [line for line in self.requests() if line.startswith("CONNECT ")]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
