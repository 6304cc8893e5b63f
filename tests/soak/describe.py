"""The report's description of the run: its setup and the machine it ran on."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from tests.soak import ledger
from tests.soak.principals import TENANTS
from tests.soak.services import postgres_bindir
from tests.support.sidecar import SidecarProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
# Streams of six chunks 20 ms apart: long enough to be cut mid-way, short enough to keep
# the request rate (and so the leak sensitivity) high.
CHUNK_DELAY_SECONDS = 0.02


def setup_lines(args: argparse.Namespace, sidecar: SidecarProcess) -> dict[str, str]:
    return {
        "command": args.command,
        "sidecar": "`python -m proxy serve` (tests/support/sidecar.py), one process for the "
        "whole run (never restarted), JSON access log to a file, OTEL_TRACES_EXPORTER=none",
        "services": "its own PostgreSQL cluster (initdb into a temp dir, fsync=off) and its "
        "own redis-server (no persistence), each on a free port; the machine's shared "
        "servers are not touched",
        "tenants": "; ".join(f"`{t}` {' '.join(f)}" for t, f in TENANTS.items()),
        "upstreams": "`openai` and `flaky`, both the fake upstream of tests/support/"
        f"fake_upstream.py (streams of 6 chunks {CHUNK_DELAY_SECONDS * 1000:.0f} ms apart); "
        "every fault goes to `flaky`, so `openai` stays healthy",
        "settings": ", ".join(
            f"{k}={'<private>' if k.endswith(('DATABASE_URL', 'REDIS_URL')) else v}"
            for k, v in sorted(sidecar.env.items())
            if k.startswith("LLM_SIDECAR_") and not k.endswith("API_KEY")
        )
        + " (DATABASE_URL and REDIS_URL point at the private services)",
        "load": f"{args.concurrency} aiohttp workers, one request at a time each, scenario "
        f"drawn by weight (seed {args.seed}); then {ledger.SECONDS:g} s of the same mix as "
        "tenant `ledger` for the reservation ledger",
        "sampling": f"VmRSS and /proc/<pid>/fd of the sidecar every {args.sample_seconds:g} s "
        f"after a {args.warmup_seconds:g} s warm-up; slopes by least squares",
    }


def machine() -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    def output(*argv: str) -> str:
        if not shutil.which(argv[0]):
            return "unknown"
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return done.stdout.strip() or "unknown"

    commit = output("git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty")
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPUs": str(os.cpu_count()),
        "kernel": f"{platform.system()} {platform.release()}",
        "versions": f"python {platform.python_version()}, aiohttp {version('aiohttp')}, "
        f"uvloop {version('uvloop')}, redis-py {version('redis')}, asyncpg "
        f"{version('asyncpg')}, llm-sidecar {version('llm-sidecar')} (git {commit}; "
        "-dirty: others' uncommitted work was in the tree)",
        "servers": f"{output('redis-server', '--version')}; "
        f"{output(str(postgres_bindir() / 'postgres'), '--version')}",
        "interpreter": sys.executable,
    }
