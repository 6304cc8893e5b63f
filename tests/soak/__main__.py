"""``python -m tests.soak [--minutes N]``: soak a real sidecar while its Redis and PostgreSQL crash.

Exit code 0 when every check of tests/soak/verdict.py passes, 1 when one fails, 2 for
bad arguments. The report goes to stdout and to ``--output`` (bench/SOAK.md).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from tests.soak import chaos
from tests.soak.describe import machine
from tests.soak.report import render
from tests.soak.run import soak
from tests.soak.verdict import passed

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "SOAK.md"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0, help="load duration (30)")
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
    parser.add_argument(
        "--no-chaos", action="store_true", help="keep Redis and PostgreSQL up the whole run"
    )
    parser.add_argument(
        "--outage-seconds",
        type=float,
        default=None,
        help="how long each killed service stays down (default: 25 s, less in short runs)",
    )
    parser.add_argument(
        "--recovery-bound",
        type=float,
        default=30.0,
        help="seconds the sidecar may take to use a restarted service again (30)",
    )
    parser.add_argument(
        "--strict-compressed",
        action="store_true",
        help="count any non-200 answer to a compressed request body as a failure",
    )
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the sidecar's access log and the servers' logs and data (printed path)",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.concurrency < 1 or args.sample_seconds <= 0:
        parser.error("--minutes, --concurrency and --sample-seconds must be positive")
    if args.warmup_seconds is None:
        args.warmup_seconds = min(30.0, args.minutes * 60 / 2)
    if args.warmup_seconds >= args.minutes * 60:
        parser.error("--warmup-seconds must be shorter than the run")
    if args.outage_seconds is None:
        args.outage_seconds = chaos.outage_seconds_for(args.minutes * 60)
    args.command = " ".join(["python -m tests.soak", *map(shlex.quote, argv)])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # A plain `kill` of the soak must still stop the servers it started (the finally blocks).
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="llm-sidecar-soak-"))
    try:
        run = soak(args, workdir, machine())
    finally:
        if args.keep_workdir:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = render(run)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"report written to {args.output}", file=sys.stderr)
    return 0 if passed(run) else 1


if __name__ == "__main__":
    sys.exit(main())
