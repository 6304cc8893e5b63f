"""Run wrk with ``post.lua`` and read back the JSON line its ``done()`` prints."""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.procs import pinned

LUA_SCRIPT = Path(__file__).with_name("post.lua")
_MARKER = "BENCH_JSON "


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run. Latencies in microseconds; ``status_errors`` counts responses >= 400.

    ``p*_us`` are wrk's own percentiles (corrected for coordinated omission); ``timed_*``
    are measured per request by ``post.lua`` in timed mode (one connection), else NaN.
    """

    requests: int
    duration_s: float
    socket_errors: int
    status_errors: int
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    timed_p50_us: float = math.nan
    timed_p90_us: float = math.nan
    timed_p99_us: float = math.nan

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.socket_errors + self.status_errors


def parse_wrk_output(stdout: str) -> WrkResult:
    """The summary line of ``post.lua``; raises ValueError when wrk printed none."""
    for line in stdout.splitlines():
        if line.startswith(_MARKER):
            data = json.loads(line[len(_MARKER) :])
            # No request finished in timed mode (or it was off): say "not measured", not 0.
            timed = int(data.get("timed", 0)) > 0
            return WrkResult(
                requests=int(data["requests"]),
                duration_s=data["duration_us"] / 1e6,
                socket_errors=sum(int(data[k]) for k in ("connect", "read", "write", "timeout")),
                status_errors=int(data["status"]),
                p50_us=float(data["p50_us"]),
                p90_us=float(data["p90_us"]),
                p99_us=float(data["p99_us"]),
                mean_us=float(data["mean_us"]),
                timed_p50_us=float(data["t50_us"]) if timed else math.nan,
                timed_p90_us=float(data["t90_us"]) if timed else math.nan,
                timed_p99_us=float(data["t99_us"]) if timed else math.nan,
            )
    raise ValueError(f"no wrk summary in output: {stdout[-500:]!r}")


def run_wrk(
    url: str,
    *,
    connections: int,
    duration_s: float,
    body_file: Path,
    key: str = "",
    stream: bool = False,
    timed: bool = False,
    cpu: str | None = None,
    timeout_s: int = 10,
) -> WrkResult:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    env = dict(os.environ, BENCH_KEY=key, BENCH_BODY_FILE=str(body_file))
    env["BENCH_STREAM"] = "1" if stream else "0"
    env["BENCH_TIMED"] = "1" if timed and connections == 1 else "0"
    done = subprocess.run(
        pinned(argv, cpu),
        env=env,
        capture_output=True,
        text=True,
        timeout=duration_s + timeout_s + 30,
        check=False,
    )
    return parse_wrk_output(done.stdout + "\n" + done.stderr)
