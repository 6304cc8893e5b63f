"""``python -m tests.soak [--minutes N]``: soak a real sidecar and report whether it stays flat.

Exit code 0 when RSS and open descriptors stay flat (and every request had an outcome its
scenario allows), 1 when not, 2 for bad arguments. See tests/soak/report.py for the limits.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import uvloop

from tests.conftest import sidecar_env
from tests.soak.load import LoadPlan, LoadResult, run_load
from tests.soak.report import SoakRun, is_flat, render
from tests.soak.sampler import read_sample, sockets_to_port, trend
from tests.soak.traffic import SCENARIOS
from tests.support.fake_upstream import FakeUpstream
from tests.support.sidecar import SidecarProcess, http_get

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "SOAK.md"
FLAKY_PROVIDER_KEY = "sk-provider-flaky-0123456789SECRET"
USERS = ("ann", "bob", "cat", "dan")
# Streams of six chunks 20 ms apart: long enough to be cut mid-way, short enough to keep
# the request rate (and so the leak sensitivity) high.
CHUNK_DELAY_SECONDS = 0.02
BREAKER_COOLDOWN_SECONDS = 2.0
IDLE_SETTLE_SECONDS = 3.0
SOAK_SETTINGS = {
    "LLM_SIDECAR_BREAKER_COOLDOWN_SECONDS": str(BREAKER_COOLDOWN_SECONDS),
    "LLM_SIDECAR_LOG_LEVEL": "info",
}
METRIC_LINE = re.compile(r"^(llm_sidecar_\w+?)(?:_total)?\{(.*)\} (\S+)$")
REPORTED_METRICS = {
    "llm_sidecar_requests": ("upstream", "code"),
    "llm_sidecar_circuit_breaker_transitions": ("upstream", "to"),
    "llm_sidecar_auth_failures": ("reason",),
    "llm_sidecar_inflight_requests": ("upstream",),  # must be back to 0 once the load stops
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0, help="load duration (default 5)")
    parser.add_argument("--concurrency", type=int, default=48, help="requests in flight (48)")
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=None,
        help="not sampled at the start (default: 30 s, at most half the run)",
    )
    parser.add_argument("--sample-seconds", type=float, default=2.0, help="sample interval (2)")
    parser.add_argument("--seed", type=int, default=9, help="seed of the scenario draw")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown report")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.concurrency < 1 or args.sample_seconds <= 0:
        parser.error("--minutes, --concurrency and --sample-seconds must be positive")
    if args.warmup_seconds is None:
        args.warmup_seconds = min(30.0, args.minutes * 60 / 2)
    if args.warmup_seconds >= args.minutes * 60:
        parser.error("--warmup-seconds must be shorter than the run")
    return args


def scrape_metrics(admin_url: str) -> dict[str, float]:
    """The counters the report shows, summed over the labels it does not show."""
    totals: dict[str, float] = {}
    for line in http_get(admin_url + "/metrics").splitlines():
        found = METRIC_LINE.match(line)
        if not found or found.group(1) not in REPORTED_METRICS or "_created" in line:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2)))
        shown = ",".join(f"{k}={labels.get(k, '')}" for k in REPORTED_METRICS[found.group(1)])
        name = f"{found.group(1)}{{{shown}}}"
        totals[name] = totals.get(name, 0.0) + float(found.group(3))
    return totals


def machine() -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    commit = "unknown"
    if shutil.which("git"):
        described = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        )
        commit = described.stdout.strip() or commit
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPUs": str(os.cpu_count()),
        "kernel": f"{platform.system()} {platform.release()}",
        "versions": f"python {platform.python_version()}, aiohttp {version('aiohttp')}, "
        f"uvloop {version('uvloop')}, llm-sidecar {version('llm-sidecar')} (git {commit}; "
        "-dirty: others' uncommitted work was in the tree)",
        "interpreter": sys.executable,
    }


def setup_lines(args: argparse.Namespace, sidecar: SidecarProcess) -> dict[str, str]:
    return {
        "command": f"python -m tests.soak --minutes {args.minutes:g} "
        f"--concurrency {args.concurrency}",
        "sidecar": "`python -m proxy serve` (tests/support/sidecar.py), SQLite key repository, "
        "in-process buckets (limits far above the load), JSON access log to a file, "
        "OTEL_TRACES_EXPORTER=none",
        "upstreams": "`openai` and `flaky`, both the fake upstream of tests/support/"
        "fake_upstream.py (in the soak's own process, streams of 6 chunks "
        f"{CHUNK_DELAY_SECONDS * 1000:.0f} ms apart); every fault goes to `flaky`, "
        "so `openai` stays healthy and its breaker closed",
        "settings": ", ".join(
            f"{k}={v}"
            for k, v in sorted(sidecar.env.items())
            if k.startswith("LLM_SIDECAR_") and not k.endswith("API_KEY")
        ),
        "load": f"{args.concurrency} aiohttp workers, one request at a time each, scenario "
        f"drawn by weight (seed {args.seed})",
        "sampling": f"VmRSS and /proc/<pid>/fd of the sidecar every {args.sample_seconds:g} s "
        f"after a {args.warmup_seconds:g} s warm-up; slopes by least squares",
    }


def soak(args: argparse.Namespace, workdir: Path) -> SoakRun:
    # The fake upstream logs a traceback each time the sidecar drops a stream it is writing
    # (every client hang-up): expected here, and thousands of them would bury the report.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    fake = FakeUpstream(chunk_delay=CHUNK_DELAY_SECONDS).start()
    env = sidecar_env(
        fake,
        LLM_SIDECAR_UPSTREAMS__FLAKY__BASE_URL=fake.url,
        LLM_SIDECAR_UPSTREAMS__FLAKY__API_KEY=FLAKY_PROVIDER_KEY,
        **SOAK_SETTINGS,
    )
    sidecar = SidecarProcess(workdir, env=env)
    workdir.mkdir(parents=True, exist_ok=True)
    # The buckets must never be what limits the soak: ~10^9 requests and 10^12 tokens a minute.
    limits = ("--rpm", "1000000000", "--tpm", "1000000000000")
    good_keys = [sidecar.create_user("soak", user, *limits) for user in USERS]
    sidecar.start()
    assert sidecar.process is not None
    pid = sidecar.process.pid
    problems: list[str] = []
    try:
        idle_before = read_sample(pid, 0).fds
        plan = LoadPlan(
            base_url=sidecar.url,
            sidecar_pid=pid,
            good_keys=good_keys,
            scenarios=SCENARIOS,
            seconds=args.minutes * 60,
            concurrency=args.concurrency,
            warmup_seconds=args.warmup_seconds,
            sample_interval_seconds=args.sample_seconds,
            seed=args.seed,
            housekeeping=fake.reset,
            alive=lambda: sidecar.process is not None and sidecar.process.poll() is None,
        )
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            load: LoadResult = runner.run(run_load(plan))
        idle_after, idle_upstream, metrics = idle_before, 0, {}
        if not load.sidecar_died:
            time.sleep(IDLE_SETTLE_SECONDS)  # let closed connections finish closing
            idle_after = read_sample(pid, 0).fds
            idle_upstream = sockets_to_port(pid, fake.port)
            metrics = scrape_metrics(sidecar.admin_url)
        else:
            problems.append(f"the sidecar exited during the load; its log:\n{sidecar.logs()}")
    finally:
        exit_code = sidecar.stop()
        fake.stop()
    if exit_code != 0 and not load.sidecar_died:
        problems.append(f"the sidecar exited {exit_code} on SIGTERM")
    return SoakRun(
        minutes=args.minutes,
        concurrency=args.concurrency,
        warmup_seconds=args.warmup_seconds,
        sample_interval_seconds=args.sample_seconds,
        load_seconds=load.seconds,
        scenarios=SCENARIOS,
        outcomes=load.outcomes,
        samples=load.samples,
        rss=trend(load.samples, "rss_kib"),
        fds=trend(load.samples, "fds"),
        idle_fds_before=idle_before,
        idle_fds_after=idle_after,
        idle_upstream_connections_after=idle_upstream,
        rss_second_half=trend(load.samples[len(load.samples) // 2 :], "rss_kib"),
        sidecar_exit_code=exit_code,
        sidecar_died_during_load=load.sidecar_died,
        sidecar_metrics=metrics,
        setup=setup_lines(args, sidecar),
        machine=machine(),
        problems=problems,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="llm-sidecar-soak-"))
    try:
        run = soak(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = render(run)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"report written to {args.output}", file=sys.stderr)
    return 0 if is_flat(run) else 1


if __name__ == "__main__":
    sys.exit(main())
