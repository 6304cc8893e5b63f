"""What the load is pointed at: one ``Target`` per row of the table, and how to start each."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.image_venv import image_python
from bench.procs import HELPER_CPU, PROXY_CPU, Child, free_port

UPSTREAM_KEY = "sk-bench-upstream-not-secret"
CHAT_PATH = "/v1/chat/completions"


@dataclass
class Target:
    """A row: where wrk sends JSON, where the SSE probe goes, whose CPU and RSS count."""

    name: str
    label: str
    url: str
    probe_url: str | None = None
    key: str = ""
    child: Child | None = None
    wrk_cpu: str | None = HELPER_CPU
    streams: bool = True

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None


def direct(nginx_port: int, paced_port: int) -> Target:
    return Target(
        name="direct",
        label="direct (wrk -> nginx)",
        url=f"http://127.0.0.1:{nginx_port}{CHAT_PATH}",
        probe_url=f"http://127.0.0.1:{paced_port}{CHAT_PATH}",
        # Nothing runs on the proxy core in this row, so wrk may have it.
        wrk_cpu=PROXY_CPU,
    )


def passthrough(workdir: Path, nginx_port: int, paced_port: int, cpu: str) -> Target:
    port = free_port()
    argv = [sys.executable, "-m", "bench.passthrough", "--port", str(port)]
    argv += ["--upstream", f"openai=http://127.0.0.1:{nginx_port}"]
    argv += ["--upstream", f"slow=http://127.0.0.1:{paced_port}"]
    argv += ["--upstream-key", UPSTREAM_KEY]
    child = Child("passthrough", argv, workdir / "passthrough.log", cpu=cpu).start()
    child.wait_ready(f"http://127.0.0.1:{port}/openai/", ok=(200,))
    return Target(
        name="passthrough",
        label="aiohttp passthrough (yardstick)",
        url=f"http://127.0.0.1:{port}/openai{CHAT_PATH}",
        probe_url=f"http://127.0.0.1:{port}/slow{CHAT_PATH}",
        child=child,
    )


def sidecar_environment(
    workdir: Path, nginx_port: int, paced_port: int, *, tracing: bool
) -> dict[str, str]:
    """Every feature on at its defaults; only ports, repository and upstreams are set."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLM_SIDECAR_", "OTEL_", "OPENAI_", "GROQ_"))
    }
    env.update(
        {
            "LLM_SIDECAR_HOST": "127.0.0.1",
            "LLM_SIDECAR_ADMIN_HOST": "127.0.0.1",
            "LLM_SIDECAR_DATABASE_URL": f"sqlite:///{workdir / 'users.db'}",
            "LLM_SIDECAR_UPSTREAMS__OPENAI__BASE_URL": f"http://127.0.0.1:{nginx_port}",
            "LLM_SIDECAR_UPSTREAMS__OPENAI__API_KEY": UPSTREAM_KEY,
            "LLM_SIDECAR_UPSTREAMS__SLOW__BASE_URL": f"http://127.0.0.1:{paced_port}",
            "LLM_SIDECAR_UPSTREAMS__SLOW__API_KEY": UPSTREAM_KEY,
            "LLM_SIDECAR_LOG_FORMAT": "json",
            "OTEL_SERVICE_NAME": "llm-sidecar-bench",
        }
    )
    if tracing:
        env["OTEL_TRACES_EXPORTER"] = "none"
    else:
        env["OTEL_SDK_DISABLED"] = "true"
    return env


def create_key(env: dict[str, str]) -> str:
    """A tenant with buckets far above what the load can use, and one user's key."""

    def cli(*args: str) -> str:
        done = subprocess.run(
            [image_python(), "-m", "proxy", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"llm-sidecar {args[0]} {args[1]} failed: {done.stderr.strip()}")
        return done.stdout

    cli("tenants", "create", "bench", "--rpm", "100000000", "--tpm", "1000000000")
    return cli("users", "create", "bench", "--tenant", "bench").strip().splitlines()[-1]


def sidecar(workdir: Path, env: dict[str, str], key: str, cpu: str, *, tracing: bool) -> Target:
    port, admin = free_port(), free_port()
    env = dict(env, LLM_SIDECAR_PORT=str(port), LLM_SIDECAR_ADMIN_PORT=str(admin))
    name = "sidecar" if tracing else "sidecar-notrace"
    # stdout (the JSON access log) goes to a file, as a container runtime would take it.
    argv = [image_python(), "-m", "proxy", "serve"]
    child = Child(name, argv, workdir / f"{name}.log", env=env, cpu=cpu).start()
    child.wait_ready(f"http://127.0.0.1:{admin}/readyz")
    label = "llm-sidecar, every feature on" if tracing else "llm-sidecar, OTEL_SDK_DISABLED"
    return Target(
        name=name,
        label=label,
        url=f"http://127.0.0.1:{port}/openai{CHAT_PATH}",
        probe_url=f"http://127.0.0.1:{port}/slow{CHAT_PATH}",
        key=key,
        child=child,
    )
