"""Measuring one target: the wrk runs and the SSE probe of one slot, the soak, the hold."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import uvloop

from bench.procs import settle, tree_cpu_seconds, tree_rss_mib
from bench.stats import Sample
from bench.stream_probe import HoldResult, hold, probe
from bench.targets import Target
from bench.verdicts import Soak
from bench.wrk_load import WrkResult, run_wrk


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how hard; ``quick()`` is a smoke run of the same steps."""

    duration_s: float = 5.0
    latency_s: float = 3.0
    stream_s: float = 3.0
    repeats: int = 3
    connections: int = 64
    warmup_s: float = 2.0
    probe_streams: int = 160
    probe_concurrency: int = 8
    probe_chunks: int = 8
    probe_gap_ms: float = 5.0
    soak_requests: int = 100_000
    soak_cap_s: float = 60.0
    hold_streams: int = 2000
    hold_chunks: int = 6
    hold_gap_ms: float = 1000.0

    def quick(self) -> Plan:
        return replace(
            self,
            duration_s=2.0,
            latency_s=1.0,
            stream_s=1.0,
            repeats=1,
            warmup_s=1.0,
            probe_streams=40,
            soak_requests=0,
            hold_streams=200,
            hold_chunks=3,
            hold_gap_ms=200.0,
        )


@dataclass(frozen=True, slots=True)
class Bodies:
    json: Path
    stream: Path


def load(
    target: Target, plan: Plan, bodies: Bodies, seconds: float, *, stream: bool = False
) -> WrkResult:
    """The 64-connection load: JSON chat completions, or with ``stream`` the SSE ones."""
    return run_wrk(
        target.url,
        connections=plan.connections,
        duration_s=seconds,
        body_file=bodies.stream if stream else bodies.json,
        key=target.key,
        stream=stream,
        cpu=target.wrk_cpu,
    )


def warm_up(target: Target, plan: Plan, bodies: Bodies) -> int:
    """Fill connection pools and caches before anything counts; returns requests sent."""
    sent = load(target, plan, bodies, plan.warmup_s).requests
    if target.probe_url is not None:
        sent += uvloop.run(probe(target.probe_url, target.key, streams=8, concurrency=4)).streams
    return sent


def measure(
    target: Target, repeat: int, plan: Plan, bodies: Bodies, quiet: Sequence[int] = ()
) -> Sample:
    """One slot: 64-connection load (CPU and RSS of the target), 1-connection latency,
    SSE load, then the paced SSE probe. Each step starts once ``quiet`` (every proxy
    process) is idle."""
    pid = target.pid
    settle(quiet)
    cpu_before = tree_cpu_seconds(pid) if pid else math.nan
    result = load(target, plan, bodies, plan.duration_s)
    cpu = tree_cpu_seconds(pid) - cpu_before if pid else None
    rss = tree_rss_mib(pid) if pid else None
    sample = Sample(target.name, repeat, result, cpu_seconds=cpu, rss_mib=rss)
    settle(quiet)
    sample.latency = run_wrk(
        target.url,
        connections=1,
        duration_s=plan.latency_s,
        body_file=bodies.json,
        key=target.key,
        cpu=target.wrk_cpu,
        timed=True,
    )
    settle(quiet)
    if target.streams:
        cpu_before = tree_cpu_seconds(pid) if pid else math.nan
        sample.stream = load(target, plan, bodies, plan.stream_s, stream=True)
        if pid:
            sample.stream_cpu_seconds = tree_cpu_seconds(pid) - cpu_before
    settle(quiet)
    if target.probe_url is not None:
        sample.probe = uvloop.run(
            probe(
                target.probe_url,
                target.key,
                streams=plan.probe_streams,
                concurrency=plan.probe_concurrency,
                chunks=plan.probe_chunks,
                gap_ms=plan.probe_gap_ms,
            )
        )
    return sample


def requests_in(sample: Sample) -> int:
    runs = (sample.load, sample.latency, sample.stream)
    total = sum(r.requests for r in runs if r is not None)
    return total + (sample.probe.streams + sample.probe.errors if sample.probe else 0)


def soak(target: Target, plan: Plan, bodies: Bodies, served: int, rps: float) -> Soak:
    """Top the target up to ``plan.soak_requests`` served, then read its RSS."""
    missing = plan.soak_requests - served
    if missing > 0 and rps > 0:
        seconds = min(plan.soak_cap_s, max(1.0, missing / rps * 1.1))
        served += load(target, plan, bodies, seconds).requests
    assert target.pid is not None
    return Soak(requests=served, rss_mib=tree_rss_mib(target.pid))


def hold_streams(target: Target, plan: Plan) -> HoldResult:
    assert target.pid is not None
    assert target.probe_url is not None
    pid = target.pid
    return uvloop.run(
        hold(
            target.probe_url,
            target.key,
            lambda: tree_rss_mib(pid),
            streams=plan.hold_streams,
            chunks=plan.hold_chunks,
            gap_ms=plan.hold_gap_ms,
        )
    )
