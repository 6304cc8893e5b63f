"""The issue's targets, each judged pass / fail / n/a from the summaries."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.stats import Summary
from bench.stream_probe import HoldResult

SOAK_REQUESTS = 100_000
AUTH_GOAL = "issue 3: cached auth costs < 5% of req/s"


@dataclass(frozen=True, slots=True)
class Verdict:
    goal: str
    measured: str
    passed: bool | None  # None: not measured in this run

    @property
    def mark(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]


@dataclass(frozen=True, slots=True)
class Soak:
    """The sidecar's RSS once it had served ``requests`` requests."""

    requests: int
    rss_mib: float


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.2f} ms"


def _at_most(goal: str, value: float, limit: float) -> Verdict:
    if math.isnan(value):
        return Verdict(goal, "not measured", None)
    return Verdict(goal, _ms(value), value <= limit)


def judge(
    rows: dict[str, Summary],
    *,
    soak: Soak | None = None,
    hold: HoldResult | None = None,
    subject: str = "sidecar",
) -> list[Verdict]:
    """Verdicts for the sidecar with every feature on (``subject``)."""
    out: list[Verdict] = []
    me = rows.get(subject)
    if me is None:
        return out
    out.append(_auth_cost(me, rows.get("sidecar-noauth")))
    yard = rows.get("passthrough")
    if yard is not None and yard.rps_median > 0:
        ratio = me.rps_median / yard.rps_median
        text = f"{ratio:.2f}x ({me.rps_median:,.0f} vs {yard.rps_median:,.0f} req/s)"
        out.append(Verdict("req/s >= 1.0x the minimal passthrough", text, ratio >= 1.0))
        out.append(Verdict("stretch: req/s >= 1.5x the passthrough", text, ratio >= 1.5))
    peer = rows.get("litellm")
    if peer is not None and peer.rps_median > 0:
        ratio = me.rps_median / peer.rps_median
        text = f"{ratio:.0f}x ({me.rps_median:,.0f} vs {peer.rps_median:,.1f} req/s)"
        out.append(Verdict(">= 50x LiteLLM's req/s", text, ratio >= 50))
    else:
        out.append(Verdict(">= 50x LiteLLM's req/s", "run `make bench-peers`", None))
    out.append(_at_most("added latency at 1 connection, p50 <= 0.4 ms", me.added_p50_ms, 0.4))
    out.append(_at_most("added latency at 1 connection, p99 <= 2 ms", me.added_p99_ms, 2.0))
    out.append(_at_most("streaming added TTFB p50 <= 0.8 ms", me.ttfb_added_p50_ms, 0.8))
    goal = "each SSE chunk forwarded <= 1 ms after it arrives (p99)"
    if math.isnan(me.chunk_added_p99_ms):
        out.append(Verdict(goal, "not measured", None))
    else:
        direct = rows.get("direct")
        text = f"p99 {_ms(me.chunk_added_p99_ms)} (worst chunk {me.chunk_max_ms:.2f} ms"
        if direct is not None:
            text += f"; direct {direct.chunk_max_ms:.2f} ms"
        text += ")"
        out.append(Verdict(goal, text, me.chunk_added_p99_ms <= 1.0))
    goal = "RSS <= 60 MB after 100,000 requests"
    if soak is None:
        out.append(Verdict(goal, "not measured", None))
    else:
        text = f"{soak.rss_mib:.1f} MB after {soak.requests:,} requests"
        enough = soak.requests >= SOAK_REQUESTS
        out.append(Verdict(goal, text, soak.rss_mib <= 60 if enough else None))
    goal = "2,000 concurrent slow streams, RSS <= 200 MB, no errors"
    if hold is None:
        out.append(Verdict(goal, "not measured", None))
    else:
        text = (
            f"{hold.completed:,}/{hold.streams:,} whole, {hold.errors} errors, "
            f"peak RSS {hold.peak_rss_mib:.1f} MB"
        )
        if hold.failures:
            text += " (" + ", ".join(f"{k} x{v}" for k, v in sorted(hold.failures.items())) + ")"
        ok = hold.streams >= 2000 and hold.errors == 0 and hold.peak_rss_mib <= 200
        out.append(Verdict(goal, text, ok if hold.streams >= 2000 else None))
    return out


def _auth_cost(me: Summary, bypassed: Summary | None) -> Verdict:
    """The share of req/s the cached key check costs: 1 - with auth / auth bypassed."""
    if bypassed is None or not bypassed.rps_median > 0 or math.isnan(me.rps_median):
        return Verdict(AUTH_GOAL, "run `python -m bench --features`", None)
    share = 1 - me.rps_median / bypassed.rps_median
    text = (
        f"{share:.1%} fewer req/s ({me.rps_median:,.0f} vs {bypassed.rps_median:,.0f} "
        "with auth bypassed)"
    )
    if not (math.isnan(me.cpu_us) or math.isnan(bypassed.cpu_us)) and me.cpu_us > 0:
        text += f"; CPU {(me.cpu_us - bypassed.cpu_us) / me.cpu_us:.1%} per request"
    return Verdict(AUTH_GOAL, text, share < 0.05)


@dataclass(frozen=True, slots=True)
class SpansExported:
    """What the local OTLP receiver got from the exporting sidecar, against what it served."""

    requests: int
    server_spans: int
    client_spans: int


def judge_export(rows: dict[str, Summary], spans: SpansExported | None) -> list[Verdict]:
    """Issue 17: the sidecar exporting every span, against the passthrough and its own load."""
    me = rows.get("sidecar-otlp")
    if me is None:
        return []
    out: list[Verdict] = []
    yard = rows.get("passthrough")
    if yard is not None and yard.rps_median > 0:
        ratio = me.rps_median / yard.rps_median
        text = f"{ratio:.2f}x ({me.rps_median:,.0f} vs {yard.rps_median:,.0f} req/s)"
        out.append(
            Verdict("issue 17: spans exported, req/s >= 1.0x the passthrough", text, ratio >= 1.0)
        )
        goal = "issue 17: CPU per relayed SSE event <= the passthrough's"
        if math.isnan(me.sse_cpu_us) or math.isnan(yard.sse_cpu_us):
            out.append(Verdict(goal, "not measured", None))
        else:
            text = f"{me.sse_cpu_us:.1f} vs {yard.sse_cpu_us:.1f} µs"
            out.append(Verdict(goal, text, me.sse_cpu_us <= yard.sse_cpu_us))
    goal = "issue 17: no span dropped (server spans received = requests served)"
    if spans is None:
        out.append(Verdict(goal, "not measured", None))
    else:
        text = (
            f"{spans.server_spans:,} server and {spans.client_spans:,} client spans received "
            f"for {spans.requests:,} requests"
        )
        out.append(Verdict(goal, text, spans.server_spans == spans.requests))
    return out
