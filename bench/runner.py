"""One benchmark run: warm up, interleave the targets over the repeats, soak, hold, report."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from bench import machine
from bench.chart import results_svg
from bench.measure import Plan, hold_streams, measure, requests_in, soak, warm_up
from bench.procs import HELPER_CPU, PROXY_CPU, exclusive, fresh_workdir, settle, tree_rss_mib
from bench.report import (
    feature_costs,
    latency_table,
    results_page,
    throughput_table,
    verdict_table,
)
from bench.span_count import count_exported
from bench.stage import Stage, stage
from bench.stats import Sample, summarise
from bench.stream_probe import HoldResult
from bench.targets import REDIS_URL
from bench.verdicts import Soak, SpansExported, judge, judge_export


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def _method(plan: Plan, stage_: Stage) -> list[str]:
    lines = [
        f"fake upstream: {stage_.upstream} on core {HELPER_CPU}, fixed 712-byte JSON chat "
        "completion (usage block included); a static SSE body for the SSE rows",
        f"proxies pinned to core {PROXY_CPU}; nginx, the paced SSE fake, wrk and the SSE "
        f"probes on core {HELPER_CPU} (the direct row runs wrk on core {PROXY_CPU})",
        f"interleaved: {plan.repeats} repeats, target order rotated each repeat; per slot: "
        f"wrk -t1 -c{plan.connections} {plan.duration_s:.0f}s (req/s, wrk's percentiles, "
        f"CPU from /proc utime+stime of the target's process tree), wrk -c1 "
        f"{plan.latency_s:.0f}s timed per request in Lua (added p50/p99 vs direct in the same "
        f"repeat), wrk -c{plan.connections} {plan.stream_s:.0f}s on SSE, then "
        f"{plan.probe_streams} paced SSE streams ({plan.probe_concurrency} at a time, "
        f"{plan.probe_chunks} chunks {plan.probe_gap_ms:g} ms apart)",
        "added TTFB and per-chunk delay: percentile through the target minus the same "
        "percentile direct to the paced fake (chunks carry their CLOCK_MONOTONIC send time)",
        "sidecar: `python -m proxy serve` in bench/.image-venv (built from requirements.lock "
        "like the image), at defaults (SQLite key, buckets and a USD budget set far above "
        "the load, breaker, Prometheus metrics, JSON access log to a file, every request traced); "
        "the rows differ only in tracing: spans exported over OTLP/HTTP to "
        "`bench.otlp_receiver` (a local receiver on the helper core that decodes and counts "
        "them), OTEL_TRACES_EXPORTER=none (spans made, not sent), OTEL_SDK_DISABLED=true",
        "errors column: non-2xx (>= 400) plus socket errors / all requests of that row",
    ]
    if stage_.get("sidecar-noauth") is not None:
        lines.append(
            "auth bypassed: `python -m bench.noauth`, the same sidecar and settings with an "
            "authenticator that returns one fixed caller (harness only; the product has no "
            "such switch)"
        )
    if stage_.get("sidecar-redis") is not None:
        lines.append(
            f"Redis buckets: the same sidecar with LLM_SIDECAR_REDIS_URL={REDIS_URL} (the "
            "local Redis server, not pinned by the harness), a tenant of its own for the run"
        )
    return lines


def _slots(stage_: Stage, plan: Plan) -> tuple[list[Sample], dict[str, int]]:
    served = {target.name: 0 for target in stage_.targets}
    for target in stage_.targets:
        _say(f"warming up {target.name}")
        served[target.name] += warm_up(target, plan, stage_.bodies)
    samples: list[Sample] = []
    count = len(stage_.targets)
    quiet = [target.pid for target in stage_.targets if target.pid is not None]
    for repeat in range(plan.repeats):
        shift = repeat % count
        for target in stage_.targets[shift:] + stage_.targets[:shift]:
            sample = measure(target, repeat, plan, stage_.bodies, quiet)
            served[target.name] += requests_in(sample)
            samples.append(sample)
            _say(
                f"repeat {repeat + 1}/{plan.repeats} {target.name}: "
                f"{sample.load.rps:,.0f} req/s, {sample.cpu_us_per_request:,.0f} µs CPU/req"
            )
    return samples, served


def run(
    plan: Plan, names: list[str], *, peers: bool, output: Path, workdir: Path, command: str
) -> int:
    with exclusive(workdir):
        return _run(plan, names, peers=peers, output=output, workdir=workdir, command=command)


def _run(
    plan: Plan, names: list[str], *, peers: bool, output: Path, workdir: Path, command: str
) -> int:
    started = time.monotonic()
    info = machine.describe()
    with stage(fresh_workdir(workdir, "run"), names, peers=peers) as stage_:
        if peers:
            from bench.peer_litellm import litellm_version

            info["versions"] += f", litellm {litellm_version()}"
        idle_rss = {t.name: tree_rss_mib(t.pid) for t in stage_.targets if t.pid is not None}
        samples, served = _slots(stage_, plan)
        labels = {target.name: target.label for target in stage_.targets}
        rows = summarise(samples, labels)
        by_name = {row.target: row for row in rows}
        subject = stage_.get("sidecar")
        soaked: Soak | None = None
        held: HoldResult | None = None
        if subject is not None and plan.soak_requests > 0:
            _say(f"soak: topping the sidecar up to {plan.soak_requests:,} requests")
            rps = by_name["sidecar"].rps_median
            settle([subject.pid] if subject.pid else [])
            soaked = soak(subject, plan, stage_.bodies, served["sidecar"], rps)
        if subject is not None and plan.hold_streams > 0:
            _say(f"hold: {plan.hold_streams:,} concurrent slow streams through the sidecar")
            settle([subject.pid] if subject.pid else [])
            held = hold_streams(subject, plan)
        exporting = stage_.get("sidecar-otlp")
        exported: SpansExported | None = None
        if exporting is not None and stage_.otlp_receiver is not None:
            _say("stopping the exporting sidecar and counting the spans it sent")
            exported = count_exported(exporting, stage_.otlp_receiver)
        verdicts = judge(by_name, soak=soaked, hold=held) + judge_export(by_name, exported)
        notes = list(stage_.notes)
        if idle_rss:
            started_rss = ", ".join(f"{name} {mib:.1f} MB" for name, mib in idle_rss.items())
            notes.append(f"RSS when started, before any load: {started_rss}")
        direct = by_name.get("direct")
        if direct is not None and not math.isnan(direct.ttfb_p50_ms):
            notes.append(
                "direct baseline of the SSE probe: TTFB p50/p99 "
                f"{direct.ttfb_p50_ms:.2f}/{direct.ttfb_p99_ms:.2f} ms, chunk delay p50/p99 "
                f"{direct.chunk_p50_ms:.2f}/{direct.chunk_p99_ms:.2f} ms (harness and paced "
                "fake share one core, so part of it is their own scheduling)"
            )
        for row in rows:
            per_repeat = ", ".join(f"{r:,.0f}" for r in row.rps if not math.isnan(r))
            notes.append(f"{row.target}: req/s per repeat {per_repeat}")
        notes.append(f"wall time of the run: {time.monotonic() - started:.0f} s")
    costs = "\n".join(feature_costs(by_name))
    tables = [throughput_table(rows), latency_table(rows), costs, verdict_table(verdicts)]
    print("\n\n".join(table for table in tables if table))
    page = results_page(
        command=command,
        machine=info,
        method=_method(plan, stage_),
        rows=rows,
        verdicts=verdicts,
        notes=notes,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page)
    chart = output.with_suffix(".svg")
    chart.write_text(results_svg(rows, f"llm-sidecar benchmark, {command}"))
    _say(f"wrote {output} and {chart}")
    return 0
