"""``llm-sidecar serve`` on its embedded defaults loads only what that configuration uses.

Issue 17 (a smaller sidecar per pod): every module costs resident memory and start time
in each pod, so the optional adapters (PostgreSQL, Redis, the injector) and the admin
commands' code are imported by the code that needs them, never by ``serve``. The real
process is started (``-X importtime`` lists every module it imports), asked for
``/readyz`` and stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.sidecar import free_port

ROOT = Path(__file__).resolve().parents[2]

NEVER_ON_EMBEDDED_DEFAULTS = (
    "asyncpg",
    "redis",
    "auth.adapters.repo_postgres",
    "proxy.adapters.buckets_redis",
    "proxy.injector",
    "auth.core.admin",
    "proxy.entrypoints.cli_admin_actions",
    "grpc",
)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _modules_of_serve(tmp_path: Path, extra: dict[str, str]) -> set[str]:
    admin = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLM_SIDECAR_", "OTEL_", "PYTHONPATH"))
    }
    env.update(extra)
    env.update(
        LLM_SIDECAR_PORT=str(free_port()),
        LLM_SIDECAR_ADMIN_PORT=str(admin),
        PYTHONPATH=str(ROOT),
    )
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "proxy", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not _ready(f"http://127.0.0.1:{admin}/readyz"):
            assert process.poll() is None, "serve exited at start"
            assert time.monotonic() < deadline, "serve not ready within 30 s"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr[-2000:]
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def _loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(module.startswith(name + ".") for module in modules)


def test_serve_on_embedded_defaults_imports_no_optional_adapter(tmp_path: Path) -> None:
    """SQLite and in-process buckets: no asyncpg, redis, injector or admin code, start to stop."""
    modules = _modules_of_serve(tmp_path, {})
    assert "auth.adapters.repo_sqlite" in modules  # the serve path was really measured
    assert [name for name in NEVER_ON_EMBEDDED_DEFAULTS if _loaded(modules, name)] == []


# Tracing at its defaults exports over OTLP/HTTP, but the exporter (requests, protobuf)
# loads on the export thread at the first batch, and the SDK's live spans never do.
EXPORT_ONLY_WHEN_EXPORTING = ("requests", "google.protobuf", "opentelemetry.exporter")
NOT_TRACED = ("opentelemetry.sdk.trace",)


def test_tracing_at_its_defaults_defers_the_exporter(tmp_path: Path) -> None:
    modules = _modules_of_serve(tmp_path, {})
    assert "proxy.adapters.tracing_otel" in modules
    lazy = (*EXPORT_ONLY_WHEN_EXPORTING, *NOT_TRACED)
    assert [name for name in lazy if _loaded(modules, name)] == []


def test_disabled_tracing_imports_no_opentelemetry(tmp_path: Path) -> None:
    modules = _modules_of_serve(tmp_path, {"OTEL_SDK_DISABLED": "true"})
    assert "auth.adapters.repo_sqlite" in modules
    assert [name for name in modules if _loaded({name}, "opentelemetry")] == []


def test_settings_import_no_adapter_and_no_entrypoint() -> None:
    """Settings are validated before anything is built: they load pydantic, not adapters."""
    script = (
        "import sys, proxy.settings\n"
        "print(sorted(m for m in sys.modules if m.startswith(('proxy.adapters', "
        "'proxy.entrypoints', 'auth'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]"
