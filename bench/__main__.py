"""``python -m bench`` (``make bench``); ``--peers`` adds LiteLLM; ``--features`` adds the
auth-bypassed and Redis-bucket sidecar rows; ``--profile`` runs py-spy."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from bench.measure import Plan
from bench.stage import ALL_TARGETS, pin_self
from bench.targets import FEATURE_TARGETS

KNOWN_TARGETS = (*ALL_TARGETS, *FEATURE_TARGETS)

HERE = Path(__file__).resolve().parent


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=float, help="seconds of each 64-connection load")
    parser.add_argument("--repeats", type=int, help="interleaved rounds over the targets")
    parser.add_argument("--quick", action="store_true", help="short smoke run (~40 s)")
    parser.add_argument("--peers", action="store_true", help="add LiteLLM proxy as a target")
    parser.add_argument(
        "--features",
        action="store_true",
        help=f"add {' and '.join(FEATURE_TARGETS)} (the auth and Redis limiter costs)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the sidecar under load")
    parser.add_argument(
        "--sse", action="store_true", help="with --profile: the SSE load instead of JSON"
    )
    parser.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help=f"comma-separated subset of {','.join(KNOWN_TARGETS)} (direct is the baseline; "
        f"default {','.join(ALL_TARGETS)})",
    )
    parser.add_argument("--output", type=Path, help="results page (default bench/RESULTS.md)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    plan = Plan().quick() if args.quick else Plan()
    if args.duration is not None:
        plan = replace(plan, duration_s=args.duration)
    if args.repeats is not None:
        plan = replace(plan, repeats=max(1, args.repeats))
    pin_self()
    if args.profile:
        from bench.profiling import profile

        chosen = [name for name in args.targets.split(",") if name.startswith("sidecar")]
        return profile(
            HERE / "profiles",
            HERE / ".work",
            seconds=args.duration or 10.0,
            name=chosen[0] if len(chosen) == 1 else "sidecar-otlp",
            sse=args.sse,
        )
    from bench.runner import run

    names = [name.strip() for name in args.targets.split(",") if name.strip()]
    if args.features:
        names += [name for name in FEATURE_TARGETS if name not in names]
    unknown = sorted(set(names) - set(KNOWN_TARGETS))
    if unknown:
        raise SystemExit(f"bench: unknown targets {unknown}; choose from {KNOWN_TARGETS}")
    # A quick run is a smoke test: it does not overwrite the committed results page.
    default = HERE / ".work" / "RESULTS-quick.md" if args.quick else HERE / "RESULTS.md"
    command = shlex.join(["python", "-m", "bench", *argv])
    return run(
        plan,
        names,
        peers=args.peers,
        output=args.output or default,
        workdir=HERE / ".work",
        command=command,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
