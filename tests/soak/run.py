"""One soak end to end: private services, fake upstream, sidecar, load under chaos, leak checks."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import uvloop

from tests.conftest import sidecar_env
from tests.soak import buckets, chaos, counters, ledger
from tests.soak.describe import CHUNK_DELAY_SECONDS, setup_lines
from tests.soak.load import LoadPlan, LoadResult, run_load
from tests.soak.principals import Keys, create_keys
from tests.soak.probes import Probes
from tests.soak.sampler import read_sample, sockets_to_port, trend
from tests.soak.services import PrivatePostgres, PrivateRedis
from tests.soak.soakrun import SoakRun
from tests.soak.traffic import SCENARIOS
from tests.support.fake_upstream import FakeUpstream
from tests.support.sidecar import SidecarProcess

FLAKY_PROVIDER_KEY = "sk-provider-flaky-0123456789SECRET"
IDLE_SETTLE_SECONDS = 3.0
SOAK_SETTINGS = {"LLM_SIDECAR_BREAKER_COOLDOWN_SECONDS": "2.0", "LLM_SIDECAR_LOG_LEVEL": "info"}


@dataclass
class Measured:
    """What the event loop part of the run brings back."""

    load: LoadResult
    probes: Probes
    baseline: tuple[str, str]
    books: ledger.Ledger | None = None
    inflight_end: Mapping[str, float] | None = None
    metrics: Mapping[str, float] | None = None
    idle_fds_after: int = 0
    idle_connections: Mapping[str, int] | None = None
    readings: list[counters.Reading] = field(default_factory=list)


async def _drive(
    args: argparse.Namespace,
    plan: LoadPlan,
    sidecar: SidecarProcess,
    redis: PrivateRedis,
    services: Mapping[chaos.ServiceName, chaos.Restartable],
    records: list[chaos.OutageRecord],
    keys: Keys,
    ports: Mapping[str, int],
) -> Measured:
    client = buckets.client(redis.url)
    probes = Probes(
        base_url=sidecar.url,
        records=records,
        redis=client,
        bucket_tenant="probe-buckets",
        bucket_user_key=keys.bucket_probe,
        auth_keys=keys.auth_probes,
        recovery_bound=args.recovery_bound,
    )
    try:
        measured = Measured(load=LoadResult(), probes=probes, baseline=await probes.baseline())

        async def turmoil(started: float) -> None:
            await chaos.run_chaos(
                records,
                services,
                started=started,
                outage_seconds=args.outage_seconds,
                keep_going=plan.alive,
            )

        async def probing(started: float) -> None:
            await probes.run(started, started + plan.seconds, plan.alive)

        async def counting(started: float) -> None:
            def done() -> bool:
                return time.monotonic() >= started + plan.seconds or not plan.alive()

            await counters.watch(sidecar.admin_url, started, done, measured.readings)

        companions = (turmoil, probing, counting)
        measured.load = await run_load(replace(plan, companions=companions))
        if measured.load.sidecar_died:
            return measured

        async def burst() -> int:
            phase = replace(plan, good_keys=keys.ledger, seconds=ledger.SECONDS, seed=plan.seed + 1)
            phase = replace(phase, concurrency=ledger.CONCURRENCY, warmup_seconds=phase.seconds)
            done = await run_load(phase)
            offset = done.started - measured.load.started
            for name, counts in done.outcomes.items():
                measured.load.outcomes[name].update(counts)
            measured.load.events += [
                replace(e, started_at=e.started_at + offset, ended_at=e.ended_at + offset)
                for e in done.events
            ]
            return done.requests

        for attempt in range(1, ledger.ATTEMPTS + 1):
            books = await ledger.keep_books(client, sidecar.admin_url, burst)
            measured.books = replace(books, attempt=attempt)
            if books.conclusive:
                break
        await asyncio.sleep(IDLE_SETTLE_SECONDS)  # let closed connections finish closing
        final = await ledger.wait_idle(sidecar.admin_url)
        measured.inflight_end = ledger.inflight(final)
        measured.metrics = counters.summarise(final)
        measured.idle_fds_after = read_sample(plan.sidecar_pid, 0).fds
        measured.idle_connections = {
            name: sockets_to_port(plan.sidecar_pid, port) for name, port in ports.items()
        }
        return measured
    finally:
        await client.aclose()


def soak(args: argparse.Namespace, workdir: Path, machine: Mapping[str, str]) -> SoakRun:
    # The fake upstream logs a traceback each time the sidecar drops a stream it is writing
    # (every client hang-up): expected here, and thousands of them would bury the report.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    workdir.chmod(0o755)  # the PostgreSQL server runs as another user and must reach its dir
    redis, postgres = PrivateRedis(workdir / "redis"), PrivatePostgres(workdir / "postgres")
    records = chaos.plan(args.minutes * 60, enabled=not args.no_chaos)
    fake: FakeUpstream | None = None
    sidecar: SidecarProcess | None = None
    problems: list[str] = []
    try:
        postgres.init()
        postgres.start()
        redis.start()
        fake = FakeUpstream(chunk_delay=CHUNK_DELAY_SECONDS).start()
        env = sidecar_env(
            fake,
            LLM_SIDECAR_UPSTREAMS__FLAKY__BASE_URL=fake.url,
            LLM_SIDECAR_UPSTREAMS__FLAKY__API_KEY=FLAKY_PROVIDER_KEY,
            LLM_SIDECAR_DATABASE_URL=postgres.url,
            LLM_SIDECAR_REDIS_URL=redis.url,
            **SOAK_SETTINGS,
        )
        sidecar = SidecarProcess(workdir / "sidecar", env=env)
        sidecar.workdir.mkdir(parents=True, exist_ok=True)
        keys = create_keys(sidecar, sum(r.service == "postgres" for r in records))
        sidecar.start()
        assert sidecar.process is not None
        process = sidecar.process
        idle_before = read_sample(process.pid, 0).fds
        plan = LoadPlan(
            base_url=sidecar.url,
            sidecar_pid=process.pid,
            good_keys=keys.traffic,
            scenarios=SCENARIOS,
            seconds=args.minutes * 60,
            concurrency=args.concurrency,
            warmup_seconds=args.warmup_seconds,
            sample_interval_seconds=args.sample_seconds,
            seed=args.seed,
            housekeeping=fake.reset,
            alive=lambda: process.poll() is None,
        )
        services: dict[chaos.ServiceName, chaos.Restartable] = {
            "redis": redis,
            "postgres": postgres,
        }
        ports = {"fake upstream": fake.port, "Redis": redis.port, "PostgreSQL": postgres.port}
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            measured = runner.run(
                _drive(args, plan, sidecar, redis, services, records, keys, ports)
            )
        if measured.load.sidecar_died:
            problems.append(f"the sidecar exited during the load; its log:\n{sidecar.logs()}")
    finally:
        started_stop = time.monotonic()
        exit_code = sidecar.stop() if sidecar is not None else None
        if fake is not None:
            fake.stop()
        redis.stop()
        postgres.stop()
    if exit_code != 0 and not measured.load.sidecar_died:
        problems.append(
            f"the sidecar exited {exit_code} on SIGTERM "
            f"({time.monotonic() - started_stop:.1f} s to stop)"
        )
    load = measured.load
    return SoakRun(
        minutes=args.minutes,
        concurrency=args.concurrency,
        warmup_seconds=args.warmup_seconds,
        sample_interval_seconds=args.sample_seconds,
        load_seconds=load.seconds,
        scenarios=SCENARIOS,
        outcomes=load.outcomes,
        events=load.events,
        samples=load.samples,
        rss=trend(load.samples, "rss_kib"),
        fds=trend(load.samples, "fds"),
        rss_second_half=trend(load.samples[len(load.samples) // 2 :], "rss_kib"),
        outages=records,
        outage_seconds=args.outage_seconds,
        recovery_bound=args.recovery_bound,
        strict_compressed=args.strict_compressed,
        baseline=measured.baseline,
        probe_counts={
            "bucket probes outside Redis outages, served by": (
                measured.probes.served_outside_outages
            ),
            "bucket probes during Redis outages, served by": measured.probes.served_during_outages,
            "auth probes (new keys) during PostgreSQL outages": measured.probes.auth_answers,
        },
        odd_probes=measured.probes.odd_outside_outages,
        readings=measured.readings,
        ledger=measured.books,
        inflight_end=measured.inflight_end or {},
        idle_fds_before=idle_before,
        idle_fds_after=measured.idle_fds_after,
        idle_connections=measured.idle_connections or {},
        sidecar_exit_code=exit_code,
        sidecar_died_during_load=load.sidecar_died,
        sidecar_metrics=measured.metrics or {},
        setup=setup_lines(args, sidecar),
        machine=machine,
        problems=problems,
    )
