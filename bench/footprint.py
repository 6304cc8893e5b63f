"""``python -m bench.footprint``: how fast the sidecar starts and how much memory it holds.

Starts the real ``python -m proxy serve`` ``--starts`` times on its embedded defaults
(SQLite repository in a fresh temporary directory, in-process buckets, no ``LLM_SIDECAR_``
or ``OTEL_`` variable but the two ports) and prints, with the tracing defaults and with
``OTEL_SDK_DISABLED=true``: the time from spawning the process to the first
``/readyz`` 200, the CPU time it had used by then (steadier than wall time on a busy
machine) and the resident set once ready and idle, each as median (min-max). The
interpreter is ``bench/.image-venv`` (the image's dependencies alone; the development
venv's extra tools change what gets imported). ``--modules`` adds the top-level packages
the serve path imports, each with the time spent in its own modules (``-X importtime``
of one real start) and the RSS its outermost module adds imported alone into a bare
interpreter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.image_venv import image_python
from bench.procs import PAGE_KIB, free_port, http_status, tree_cpu_seconds, tree_rss_mib

ROOT = Path(__file__).resolve().parents[1]
CONFIGS: Mapping[str, Mapping[str, str]] = {
    "defaults": {},
    "OTEL_SDK_DISABLED=true": {"OTEL_SDK_DISABLED": "true"},
}
IDLE_SECONDS = 1.0


def _environment(extra: Mapping[str, str], admin_port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LLM_SIDECAR_", "OTEL_", "PYTHON", "MALLOC_"))
    }
    env.update(extra)
    env["LLM_SIDECAR_PORT"] = str(free_port())
    env["LLM_SIDECAR_ADMIN_PORT"] = str(admin_port)
    env["PYTHONPATH"] = str(ROOT)
    return env


@dataclass(frozen=True, slots=True)
class Start:
    """One start of the sidecar, measured."""

    ready_s: float
    """Wall time from spawning the process to its first ``/readyz`` 200."""
    cpu_s: float
    """CPU time the process had used by then: what a busy machine cannot inflate."""
    rss_mib: float
    """Resident set after ``IDLE_SECONDS`` of idling once ready."""
    stderr: str


def start_once(python: str, extra: Mapping[str, str], python_flags: Sequence[str] = ()) -> Start:
    """Start the sidecar once in a fresh directory, wait for ``/readyz`` 200, measure, stop."""
    admin = free_port()
    env = _environment(extra, admin)
    url = f"http://127.0.0.1:{admin}/readyz"
    with tempfile.TemporaryDirectory(prefix="footprint-") as workdir:
        started = time.perf_counter()
        process = subprocess.Popen(
            [python, *python_flags, "-m", "proxy", "serve"],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            while http_status(url) != 200:
                if process.poll() is not None or time.perf_counter() - started > 30:
                    raise RuntimeError("the sidecar did not become ready")
                time.sleep(0.002)
            ready = time.perf_counter() - started
            cpu = tree_cpu_seconds(process.pid)
            time.sleep(IDLE_SECONDS)
            rss = tree_rss_mib(process.pid)
        finally:
            process.terminate()
            _, stderr = process.communicate(timeout=30)
    return Start(ready, cpu, rss, stderr.decode(errors="replace"))


def _spread(values: Sequence[float], unit: str, scale: float = 1.0) -> str:
    scaled = [v * scale for v in values]
    return f"{statistics.median(scaled):6.1f} {unit} ({min(scaled):.1f}-{max(scaled):.1f})"


def _by_package(stderr: str) -> dict[str, tuple[float, str]]:
    """Top-level package -> (seconds spent importing its own modules, its outermost module).

    Self times add up to the whole import; the outermost module (the one with the
    largest cumulative time) is what the RSS probe imports for the package.
    """
    totals: dict[str, float] = defaultdict(float)
    outermost: dict[str, tuple[int, str]] = {}
    for line in stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        name = parts[2].strip()
        package, cumulative = name.split(".")[0], int(parts[1])
        totals[package] += int(parts[0]) / 1e6
        if cumulative > outermost.get(package, (-1, ""))[0]:
            outermost[package] = (cumulative, name)
    return {package: (totals[package], outermost[package][1]) for package in totals}


# Current RSS, not ru_maxrss: a child's peak starts at its parent's (kept across exec).
_PROBE = (
    "import importlib, sys\n"
    "def rss(): return int(open('/proc/self/statm').read().split()[1])\n"
    "before = rss()\n"
    "importlib.import_module(sys.argv[1])\n"
    "print(rss() - before)\n"
)


def alone_rss_mib(python: str, module: str) -> float:
    """RSS a bare interpreter gains importing ``module`` alone."""
    done = subprocess.run(
        [python, "-c", _PROBE, module],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    return int(done.stdout.strip()) * PAGE_KIB / 1024


def modules_table(python: str, extra: Mapping[str, str], limit: int) -> list[str]:
    packages = _by_package(start_once(python, extra, ("-X", "importtime")).stderr)
    lines = [f"  {'package':<20} {'self ms':>8} {'alone +MiB':>10}  (module probed)"]
    for name, (seconds, module) in sorted(packages.items(), key=lambda item: -item[1][0])[:limit]:
        rss = alone_rss_mib(python, module)
        lines.append(f"  {name:<20} {seconds * 1000:8.1f} {rss:10.1f}  ({module})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__)
    parser.add_argument("--starts", type=int, default=7, help="starts per configuration")
    parser.add_argument("--modules", action="store_true", help="add the per-package table")
    parser.add_argument("--top", type=int, default=15, help="packages in that table")
    parser.add_argument(
        "--dev-venv",
        action="store_true",
        help="run on this interpreter, not the image's dependencies (bench/.image-venv)",
    )
    args = parser.parse_args(argv)
    python = sys.executable if args.dev_venv else image_python()
    print(f"{python}: {args.starts} starts per configuration")
    for label, extra in CONFIGS.items():
        samples = [start_once(python, extra) for _ in range(args.starts)]
        ready = _spread([s.ready_s for s in samples], "ms", 1000)
        cpu = _spread([s.cpu_s for s in samples], "ms", 1000)
        rss = _spread([s.rss_mib for s in samples], "MiB")
        print(f"{label}\n  start to /readyz 200 {ready}\n  CPU used by then     {cpu}")
        print(f"  idle RSS             {rss}")
        if args.modules:
            print("\n".join(modules_table(python, extra, args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
