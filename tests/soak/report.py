"""The soak's report, as plain markdown (printed and written to bench/SOAK.md)."""

from __future__ import annotations

import math
from collections import Counter

from tests.soak.ledger import ATTEMPTS, TPM
from tests.soak.markdown import bullets, number, seconds, table
from tests.soak.notes import CAN_IT_FAIL, HOW
from tests.soak.soakrun import SoakRun
from tests.soak.traffic import source
from tests.soak.verdict import (
    MIB,
    RSS_SLOPE_LIMIT_KIB_PER_MIN,
    checks,
    judged,
    outage_503s,
    passed,
    violations,
    while_up,
)


def _outages(run: SoakRun) -> list[str]:
    if not run.outages:
        return ["No outages (`--no-chaos`)."]
    rows = []
    for n, r in enumerate(run.outages, 1):
        rows.append(
            [
                f"{n}. {r.service}",
                seconds(r.killed_at),
                "-" if r.killed_at is None else seconds(r.ready_at, r.killed_at),
                "-" if r.killed_at is None else seconds(r.first_failure_at, r.killed_at),
                "never" if r.recovery_seconds is None else f"{r.recovery_seconds:.2f}",
                _after(run, n - 1),
                f"{outage_503s(run, r):,}",
            ]
        )
    head = ["outage", "kill -9 at (s)", "down for (s)", "sidecar saw it after (s)"]
    head += ["recovered after restart (s)", "failures after recovery", "documented 503s"]
    return [
        *table(head, rows, "lrrrrrr"),
        "",
        f"Each service stayed down {run.outage_seconds:g} s before its restart. 'Recovered' "
        "is from the restarted service answering (PING, pg_isready) to the first probe "
        "that shows the sidecar using it again (probes run every 0.25 s). 'Failures after "
        "recovery': rises of the service's failure counter, sampled every second, from then "
        "until its next kill (the seconds after the restart of each). 'Documented 503s': "
        "answers forgiven because the request overlapped this outage (kill to recovery + 5 s).",
    ]


def _after(run: SoakRun, index: int) -> str:
    record = run.outages[index]
    found = while_up(run, record.service, index)
    if not found or record.ready_at is None:
        return f"{len(found)}"
    ready = record.ready_at
    shown = ", ".join(f"+{at - ready:.0f}" for at in found[:8])
    return f"{len(found)} ({shown}{', ...' if len(found) > 8 else ''})"


def _by_source(run: SoakRun) -> list[str]:
    totals: Counter[str] = Counter()
    for counts in run.outcomes.values():
        totals.update(counts)
    rows = [
        [source(outcome), f"`{outcome}`", f"{n:,}"]
        for outcome, n in sorted(totals.items(), key=lambda item: (source(item[0]), -item[1]))
    ]
    return table(["who answered", "outcome", "requests"], rows, "llr")


def _traffic(run: SoakRun) -> list[str]:
    total_weight = sum(s.weight for s in run.scenarios)
    outside: Counter[tuple[str, str]] = Counter()
    for (cat, scenario, _), n in judged(run).items():
        outside[(scenario, cat)] += n
    rows = []
    for s in run.scenarios:
        counts = run.outcomes.get(s.name, Counter())
        shown = ", ".join(f"{o}: {n:,}" for o, n in counts.most_common())
        why = "; ".join(f"{cat}: {n:,}" for (name, cat), n in outside.items() if name == s.name)
        rows.append(
            [
                f"{s.name} (`{s.model}`)",
                f"{s.weight / total_weight:.0%}",
                f"{sum(counts.values()):,}",
                shown or "-",
                why or "-",
            ]
        )
    head = ["scenario", "share", "requests", "outcomes", "outside its list, and why"]
    return table(head, rows, "lrrll")


def _violations(run: SoakRun, shown: int = 20) -> list[str]:
    found = violations(run)
    if not found:
        return ["None."]
    rows = [
        [f"{e.started_at:.2f}", f"{e.ended_at:.2f}", e.scenario, f"`{e.outcome}`"]
        for e in found[:shown]
    ]
    more = ["", f"... and {len(found) - shown:,} more."] if len(found) > shown else []
    return [*table(["sent at (s)", "answered at (s)", "scenario", "outcome"], rows, "rrll"), *more]


def _probes(run: SoakRun) -> list[str]:
    store, auth = run.baseline
    lines = [f"- before the load: buckets served by `{store}`, a new key got `{auth}`"]
    for name, counts in run.probe_counts.items():
        shown = ", ".join(f"`{k}`: {v:,}" for k, v in counts.most_common()) or "none"
        lines.append(f"- {name}: {shown}")
    odd = ", ".join(f"{at:.1f} s `{answer}`" for at, answer in run.odd_probes[:12])
    lines.append(
        "- bucket probes not served by Redis away from any Redis outage (time, answer): "
        + (odd or "none")
        + (f" and {len(run.odd_probes) - 12} more" if len(run.odd_probes) > 12 else "")
    )
    return lines


def _ledger(run: SoakRun) -> list[str]:
    ledger = run.ledger
    if ledger is None:
        return ["(not run)"]
    return [
        f"- {ledger.requests:,} requests of the whole mix as tenant `ledger` (tpm {TPM:,})",
        f"- start level {ledger.start_level:,.2f} at Redis stamp {ledger.start_stamp_us} µs",
        f"- stored at the end: {number(ledger.end_level)} at {ledger.end_stamp_us} µs",
        f"- tokens the upstream reported (`llm_sidecar_tokens_total{{tenant=ledger}}`): "
        f"{ledger.settled_tokens:,.0f}",
        f"- expected level (start + refill - reported): {number(ledger.expected_level)}; "
        f"never returned: {number(ledger.unreturned)} tokens",
        f"- Redis errors during the phase: {ledger.backend_errors:.0f} (attempt {ledger.attempt} "
        f"of at most {ATTEMPTS}: a phase with Redis errors proves nothing and is run again)",
    ]


def _resources(run: SoakRun) -> list[str]:
    rss, fds = run.rss, run.fds
    rss_mib = (f"{v / MIB:.2f}" for v in (rss.start, rss.end, rss.maximum))
    fd_counts = (f"{v:.0f}" for v in (fds.start, fds.end, fds.maximum))
    rows = [
        ["RSS (MiB)", *rss_mib, f"{rss.growth / MIB:+.2f}", f"{rss.slope_per_minute:+.1f} KiB/min"],
        ["open fds", *fd_counts, f"{fds.growth:+.0f}", f"{fds.slope_per_minute:+.2f} /min"],
    ]
    head = ["series", "start", "end", "max", "end - start", "least-squares slope"]
    half = run.rss_second_half
    step = max(1, math.ceil(len(run.samples) / 12))
    picked = list(run.samples[::step])
    if picked and picked[-1] is not run.samples[-1]:
        picked.append(run.samples[-1])
    sample_rows = [[f"{s.at_seconds:.0f}", f"{s.rss_kib / MIB:.2f}", str(s.fds)] for s in picked]
    other = run.idle_fds_after - sum(run.idle_connections.values()) - run.idle_fds_before
    pooled = ", ".join(f"{n} to {peer}" for peer, n in run.idle_connections.items())
    return [
        *table(head, rows, "lrrrrr"),
        "",
        f"RSS over the second half of the samples alone: {half.start / MIB:.2f} -> "
        f"{half.end / MIB:.2f} MiB, slope {half.slope_per_minute:+.1f} KiB/min.",
        "",
        f"Idle open fds (no client connected): {run.idle_fds_before} before the load, "
        f"{run.idle_fds_after} after it, of which connections kept for reuse: {pooled or '-'}; "
        f"{other:+d} other descriptors. Exit code on SIGTERM: {run.sidecar_exit_code}.",
        "",
        *table(["t (s)", "RSS (MiB)", "open fds"], sample_rows, "rrr"),
    ]


def render(run: SoakRun) -> str:
    """The whole report as markdown."""
    verdict = "PASS" if passed(run) else "FAIL"
    floor = RSS_SLOPE_LIMIT_KIB_PER_MIN * 1024 / (run.requests_per_second * 60 or math.nan)
    rows = [[c.what, c.measured, c.limit, "pass" if c.passed else "**FAIL**"] for c in checks(run)]
    metrics = [f"- `{k}`: {v:,.0f}" for k, v in sorted(run.sidecar_metrics.items())]
    lines = [
        "# llm-sidecar soak run",
        "",
        "Generated by `python -m tests.soak` (`make soak`). Re-run it to refresh this file.",
        "",
        f"Command: `{run.setup.get('command', '?')}` on {run.machine.get('date', '?')}.",
        "",
        f"**Verdict: {verdict}.** {run.requests:,} requests in {run.load_seconds:.0f} s "
        f"({run.requests_per_second:,.0f} req/s) at concurrency {run.concurrency}, "
        f"{len(run.outages)} outages (`kill -9`) of the sidecar's Redis and PostgreSQL; "
        f"RSS slope {run.rss.slope_per_minute / MIB:+.3f} MiB/min, "
        f"open fds slope {run.fds.slope_per_minute:+.2f} /min.",
        "",
        "## Verdict",
        "",
        *table(["check", "measured", "limit", "result"], rows, "lrrl"),
        "",
        f"At this run's rate the RSS slope limit equals {floor:,.1f} bytes retained per "
        "request. Start and end are medians of the first and last three samples.",
        "",
        "## How the chaos works",
        "",
        HOW,
        "",
        "## Outages and recovery",
        "",
        *_outages(run),
        "",
        "## Recovery probes",
        "",
        *_probes(run),
        "",
        "## Who answered what",
        "",
        *_by_source(run),
        "",
        "## Traffic",
        "",
        *_traffic(run),
        "",
        "Outcomes no rule explains (the first 20, by time since the load started):",
        "",
        *_violations(run),
        "",
        "## Leaks, with traffic stopped",
        "",
        "In flight at the end: "
        + (", ".join(f"`{k}` {v:g}" for k, v in sorted(run.inflight_end.items())) or "-"),
        "",
        "Reservation ledger (tests/soak/ledger.py):",
        "",
        *_ledger(run),
        "",
        "## Sidecar process (after the warm-up)",
        "",
        *_resources(run),
        "",
        "## What the sidecar counted (`/metrics` at the end)",
        "",
        *(metrics or ["(not scraped)"]),
        "",
        "## Setup",
        "",
        *bullets(run.setup),
        "",
        "## Machine",
        "",
        *bullets(run.machine),
    ]
    lines += ["", "## Can it fail?", "", CAN_IT_FAIL]
    if run.problems:
        lines += ["", "## Problems", "", *[f"- {p}" for p in run.problems]]
    return "\n".join(lines) + "\n"
