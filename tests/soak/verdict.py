"""The soak's verdict: every check a finished run must pass, and why each limit is what it is.

- RSS slope below 1 MiB per minute, and growth (end minus start) below 5 MiB. A leak
  keeps growing with traffic, so at the hundreds of requests per second a soak drives
  1 MiB/min means only a few bytes per request; the report prints that floor for the run.
  Below it, CPython's allocator (arenas kept after a burst, pools fragmenting) and the
  auth cache filling to its bound move RSS in steps that need not come back.
- Open descriptors: growth of at most 8, and the fitted line may climb at most 8 over the
  sampled window. The count under load swings by about +-5 with the connections open at
  the instant of the reading; a descriptor leaked per faulty request would add hundreds.
- Outcomes: each scenario lists what it may get. Outside that list, only two things are
  forgiven: a documented 503 of the service that is down (``auth_unavailable`` for
  PostgreSQL, ``rate_limiter_unavailable`` for Redis), for a request that overlapped its
  outage window (kill to measured recovery + ``GRACE_SECONDS``), and, unless
  ``--strict-compressed``, a non-5xx answer to a compressed body while that support is
  being finished. Anything else, and any 500 the sidecar made itself, fails the run.
- Recovery: after each restart the sidecar must use the service again (probes.py)
  within ``--recovery-bound`` seconds (30), without being restarted, and then keep using
  it: its failure counter for the service (counters.py) must not rise from the recovery
  to the next kill, nor before the first outage.
- Leaks with traffic stopped: ``llm_sidecar_inflight_requests`` is 0 for every upstream
  and the reservation ledger (ledger.py) balances to within a token.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from tests.soak.chaos import OutageRecord, ServiceName
from tests.soak.counters import failures_while_up
from tests.soak.ledger import TOLERANCE_TOKENS
from tests.soak.load import Event
from tests.soak.probes import REDIS_SERVED
from tests.soak.soakrun import SoakRun
from tests.soak.traffic import Scenario, source, status_of

MIB = 1024
RSS_SLOPE_LIMIT_KIB_PER_MIN = 1.0 * MIB
RSS_GROWTH_LIMIT_KIB = 5.0 * MIB
FD_GROWTH_LIMIT = 8
GRACE_SECONDS = 5.0
OUTAGE_503 = {"503 auth_unavailable": "postgres", "503 rate_limiter_unavailable": "redis"}
PENDING_COMPRESSED = "compressed body not accepted (pending fix)"
VIOLATION = "violation"


def _in_window(event: Event, run: SoakRun, record: OutageRecord) -> bool:
    window = record.window(GRACE_SECONDS, run.recovery_bound)
    return window is not None and event.started_at <= window[1] and event.ended_at >= window[0]


def _overlaps(event: Event, run: SoakRun, service: str) -> bool:
    return any(r.service == service and _in_window(event, run, r) for r in run.outages)


def outage_503s(run: SoakRun, record: OutageRecord) -> int:
    """The service's documented 503s answered to requests that overlapped this outage."""
    return sum(
        1
        for event in run.events
        if OUTAGE_503.get(event.outcome) == record.service and _in_window(event, run, record)
    )


def category(event: Event, run: SoakRun, scenario: Scenario) -> str:
    """Why an outcome outside the scenario's list is forgiven, or ``VIOLATION``."""
    service = OUTAGE_503.get(event.outcome)
    if service is not None and _overlaps(event, run, service):
        return f"documented 503 during the {service} outage"
    if scenario.compressed and not run.strict_compressed and status_of(event.outcome) < 500:
        return PENDING_COMPRESSED
    return VIOLATION


def judged(run: SoakRun) -> Counter[tuple[str, str, str]]:
    """Counts by (category, scenario, outcome) of every outcome outside its scenario's list."""
    by_name = {s.name: s for s in run.scenarios}
    return Counter(
        (category(event, run, by_name[event.scenario]), event.scenario, event.outcome)
        for event in run.events
    )


def violations(run: SoakRun) -> list[Event]:
    """The events no rule explains, in time order."""
    by_name = {s.name: s for s in run.scenarios}
    found = [e for e in run.events if category(e, run, by_name[e.scenario]) == VIOLATION]
    return sorted(found, key=lambda e: e.started_at)


def count(run: SoakRun, wanted: str) -> int:
    return sum(n for (cat, _, _), n in judged(run).items() if cat == wanted)


def sidecar_500s(run: SoakRun) -> int:
    return sum(
        n
        for counts in run.outcomes.values()
        for outcome, n in counts.items()
        if status_of(outcome) == 500 and source(outcome) == "sidecar"
    )


@dataclass(frozen=True)
class Check:
    what: str
    measured: str
    limit: str
    passed: bool


def while_up(run: SoakRun, service: ServiceName, index: int | None) -> list[float]:
    """When the service's failure counter rose while it was up after outage ``index``."""
    return failures_while_up(service, run.outages, run.readings).get(index, [])


def _up_checks(run: SoakRun) -> Iterator[Check]:
    names: dict[ServiceName, str] = {"redis": "Redis", "postgres": "PostgreSQL"}
    for service, name in names.items():
        before = while_up(run, service, None)
        yield Check(
            f"{name} failures while up, before any outage", f"{len(before)}", "0", not before
        )


def _outage_checks(run: SoakRun) -> Iterator[Check]:
    for n, record in enumerate(run.outages, 1):
        name = f"{record.service} outage {n}"
        restarted = record.killed_at is not None and record.ready_at is not None
        yield Check(f"{name}: killed and restarted", "yes" if restarted else "no", "yes", restarted)
        seen = record.first_failure_at is not None
        yield Check(f"{name}: seen by the sidecar", "yes" if seen else "no", "yes", seen)
        took = record.recovery_seconds
        shown = "never" if took is None else f"{took:.2f} s"
        passed = took is not None and took <= run.recovery_bound
        yield Check(
            f"{name}: recovered after restart", shown, f"<= {run.recovery_bound:g} s", passed
        )
        after = while_up(run, record.service, n - 1)
        shown = f"{len(after)}"
        if after and record.ready_at is not None:
            shown += f" (the last {after[-1] - record.ready_at:.0f} s after the restart)"
        yield Check(f"{name}: failures after recovery, until the next kill", shown, "0", not after)


def _ledger_check(run: SoakRun) -> Check:
    ledger = run.ledger
    if ledger is None or ledger.unreturned is None:
        return Check("reservation ledger: tokens never returned", "not measured", "0", False)
    shown = f"{ledger.unreturned:+.2f} tokens"
    if not ledger.conclusive:
        shown += f" (inconclusive: {ledger.backend_errors:.0f} Redis errors)"
    return Check(
        "reservation ledger: tokens never returned",
        shown,
        f"|x| <= {TOLERANCE_TOKENS:g}",
        ledger.passed,
    )


def checks(run: SoakRun) -> list[Check]:
    """The verdict, one line each; the run passes (exit 0) when every one passes."""
    violations = count(run, VIOLATION)
    store, auth = run.baseline
    leftover = {k: v for k, v in run.inflight_end.items() if v}
    return [
        Check(
            "RSS slope",
            f"{run.rss.slope_per_minute / MIB:+.3f} MiB/min",
            f"< {RSS_SLOPE_LIMIT_KIB_PER_MIN / MIB:.0f} MiB/min",
            run.rss.slope_per_minute < RSS_SLOPE_LIMIT_KIB_PER_MIN,
        ),
        Check(
            "RSS growth (end - start)",
            f"{run.rss.growth / MIB:+.2f} MiB",
            f"< {RSS_GROWTH_LIMIT_KIB / MIB:.0f} MiB",
            run.rss.growth < RSS_GROWTH_LIMIT_KIB,
        ),
        Check(
            "open fds slope x sampled window",
            f"{run.fds.slope_per_minute:+.2f} /min x {run.fds.span_minutes:.1f} min "
            f"= {run.fds.fitted_rise:+.1f}",
            f"<= {FD_GROWTH_LIMIT}",
            run.fds.fitted_rise <= FD_GROWTH_LIMIT,
        ),
        Check(
            "open fds growth (end - start)",
            f"{run.fds.growth:+.0f}",
            f"<= {FD_GROWTH_LIMIT}",
            run.fds.growth <= FD_GROWTH_LIMIT,
        ),
        Check(
            "sidecar alive for the whole run (never restarted)",
            "died" if run.sidecar_died_during_load else "yes",
            "yes",
            not run.sidecar_died_during_load,
        ),
        Check("baseline: buckets served by Redis", store, REDIS_SERVED, store == REDIS_SERVED),
        Check("baseline: a new key authenticates", auth, "200", auth == "200"),
        Check("outcomes no rule explains", f"{violations:,}", "0", violations == 0),
        Check("500s made by the sidecar", f"{sidecar_500s(run):,}", "0", sidecar_500s(run) == 0),
        *_up_checks(run),
        *_outage_checks(run),
        Check(
            "in-flight requests at the end (every upstream)",
            ", ".join(f"{k}={v:g}" for k, v in sorted(run.inflight_end.items())) or "none",
            "all 0",
            bool(run.inflight_end) and not leftover,
        ),
        _ledger_check(run),
    ]


def passed(run: SoakRun) -> bool:
    return all(check.passed for check in checks(run)) and not run.problems
