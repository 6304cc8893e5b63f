"""What the results page says about the machine and the software versions."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bench.procs import ALLOWED_CPUS
from bench.upstream_nginx import nginx_binary


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _first_line(argv: list[str], pattern: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    found = re.search(pattern, done.stdout + done.stderr)
    return found.group(1) if found else "unknown"


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None:
        return "unknown"
    # "-dirty": others' uncommitted work in the tree was measured too.
    argv = ["git", "-C", str(root), "describe", "--always", "--dirty"]
    return _first_line(argv, r"(\S+)")


def describe(extra_versions: dict[str, str] | None = None) -> dict[str, str]:
    nginx = nginx_binary()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    versions = {
        "python": platform.python_version(),
        "aiohttp": _dist("aiohttp"),
        "uvloop": _dist("uvloop"),
        "llm-sidecar": f"{_dist('llm-sidecar')} (git {git_commit()})",
        "nginx": _first_line([nginx, "-v"], r"nginx/(\S+)") if nginx else "not installed",
        "wrk": _first_line(["wrk", "-v"], r"wrk (\S+)"),
        **(extra_versions or {}),
    }
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPUs": f"{len(ALLOWED_CPUS)} x {cpu_model()}",
        "kernel": f"{platform.system()} {platform.release()}",
        "load average before the run (1/5/15 min)": load,
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "interpreter": sys.executable,
    }
