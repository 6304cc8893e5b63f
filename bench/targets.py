"""What the load is pointed at: one ``Target`` per row of the table, and how to start each."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.image_venv import ROOT, image_python
from bench.procs import HELPER_CPU, PROXY_CPU, Child, free_port

UPSTREAM_KEY = "sk-bench-upstream-not-secret"
CHAT_PATH = "/v1/chat/completions"
# Optional rows (``--features``): the auth-cost and limiter-cost figures.
FEATURE_TARGETS = ("sidecar-noauth", "sidecar-redis")
# Buckets and a monthly USD budget far above what the load uses: the limiter and the spend
# ledger's admission and settling still run on every request, as for a budgeted team.
ROOMY_TENANT = ("--rpm", "100000000", "--tpm", "1000000000", "--budget-usd", "1000000")
# DB 15: the tests and a developer's Redis use the low numbers.
REDIS_URL = "redis://127.0.0.1:6379/15"


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
    admin_url: str | None = None

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
    workdir: Path, nginx_port: int, paced_port: int, *, tracing: bool, otlp: str | None = None
) -> dict[str, str]:
    """Every feature on at its defaults; only ports, repository and upstreams are set.

    Tracing makes spans without sending them, unless ``otlp`` names a receiver to export
    them to over OTLP/HTTP; ``tracing=False`` sets ``OTEL_SDK_DISABLED``.
    """
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
    if tracing and otlp:
        env["OTEL_TRACES_EXPORTER"] = "otlp"
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp
    elif tracing:
        env["OTEL_TRACES_EXPORTER"] = "none"
    else:
        env["OTEL_SDK_DISABLED"] = "true"
    return env


def create_key(env: dict[str, str], tenant: str = "bench") -> str:
    """A tenant with buckets and a budget far above what the load can use, and one key."""

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

    cli("tenants", "create", tenant, *ROOMY_TENANT)
    return cli("users", "create", tenant, "--tenant", tenant).strip().splitlines()[-1]


def _serve(
    workdir: Path, env: dict[str, str], key: str, cpu: str, *, name: str, label: str, module: str
) -> Target:
    port, admin = free_port(), free_port()
    env = dict(env, LLM_SIDECAR_PORT=str(port), LLM_SIDECAR_ADMIN_PORT=str(admin))
    # stdout (the JSON access log) goes to a file, as a container runtime would take it.
    argv = [image_python(), "-m", module] + (["serve"] if module == "proxy" else [])
    child = Child(name, argv, workdir / f"{name}.log", env=env, cpu=cpu).start()
    child.wait_ready(f"http://127.0.0.1:{admin}/readyz")
    return Target(
        name=name,
        label=label,
        url=f"http://127.0.0.1:{port}/openai{CHAT_PATH}",
        probe_url=f"http://127.0.0.1:{port}/slow{CHAT_PATH}",
        key=key,
        child=child,
        admin_url=f"http://127.0.0.1:{admin}",
    )


def sidecar(workdir: Path, env: dict[str, str], key: str, cpu: str, *, tracing: bool) -> Target:
    name = "sidecar" if tracing else "sidecar-notrace"
    label = "llm-sidecar, every feature on" if tracing else "llm-sidecar, OTEL_SDK_DISABLED"
    return _serve(workdir, env, key, cpu, name=name, label=label, module="proxy")


def sidecar_otlp(workdir: Path, env: dict[str, str], key: str, cpu: str) -> Target:
    """Every feature on, every request traced and its spans exported to a local receiver."""
    label = "llm-sidecar, every feature on, spans exported (OTLP/HTTP)"
    return _serve(workdir, env, key, cpu, name="sidecar-otlp", label=label, module="proxy")


def otlp_receiver(workdir: Path, cpu: str) -> tuple[Child, str]:
    """``bench.otlp_receiver`` on the helper core; its URL counts what arrived."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.otlp_receiver", "--port", str(port)]
    child = Child("otlp-receiver", argv, workdir / "otlp-receiver.log", cpu=cpu).start()
    url = f"http://127.0.0.1:{port}"
    child.wait_ready(url + "/counts")
    return child, url


def sidecar_noauth(workdir: Path, env: dict[str, str], cpu: str) -> Target:
    """Every feature on, but ``bench.noauth`` authenticates every request as one caller."""
    # The image venv has this tree installed in editable mode, which covers ``proxy`` and
    # ``auth``; ``bench`` itself is found through PYTHONPATH.
    env = dict(env, PYTHONPATH=str(ROOT))
    label = "llm-sidecar, auth bypassed (harness only)"
    return _serve(workdir, env, "", cpu, name="sidecar-noauth", label=label, module="bench.noauth")


def redis_reachable(url: str = REDIS_URL, timeout: float = 1.0) -> bool:
    """True when a Redis at ``url``'s host and port answers PING (no password expected)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def sidecar_redis(workdir: Path, env: dict[str, str], cpu: str) -> Target:
    """Every feature on, with the buckets shared through Redis (DB 15).

    A tenant of its own, unique to this run, so its bucket keys meet no one else's.
    """
    env = dict(env, LLM_SIDECAR_REDIS_URL=REDIS_URL)
    key = create_key(env, tenant=f"bench-{os.getpid()}-{time.time_ns() // 1_000_000}")
    label = "llm-sidecar, Redis buckets"
    return _serve(workdir, env, key, cpu, name="sidecar-redis", label=label, module="proxy")
