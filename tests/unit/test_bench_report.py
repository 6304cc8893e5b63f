"""Unit tests of the benchmark harness's parsing, figures and report (no load is run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.measure import Plan
from bench.payloads import CHAT_REPLY, request_body, static_sse_body
from bench.procs import PAGE_KIB, parse_stat_cpu_ticks, parse_stat_ppid, parse_statm_rss_kib
from bench.profiling import function_of, library_of, parse_collapsed, short, summarise_stacks
from bench.report import feature_costs, latency_table, results_page, throughput_table
from bench.stats import Sample, Summary, percentile, summarise
from bench.stream_probe import HoldResult, ProbeResult
from bench.upstream_nginx import nginx_string, render_config
from bench.verdicts import AUTH_GOAL, Soak, judge
from bench.wrk_load import WrkResult, parse_wrk_output

WRK_LINE = (
    'BENCH_JSON {"requests":3000,"duration_us":2000000,"bytes":1,"connect":1,"read":2,'
    '"write":0,"status":4,"timeout":3,"p50_us":500.0,"p90_us":900.0,"p99_us":1500.0,'
    '"mean_us":600.0,"max_us":9000.0,"timed":3000,"t50_us":210.5,"t90_us":300.0,'
    '"t99_us":800.0}'
)


NAN = math.nan


def wrk(rps: float = 1000.0, t50: float = NAN, t99: float = NAN, **kw: float) -> WrkResult:
    return WrkResult(
        requests=int(rps),
        duration_s=1.0,
        socket_errors=int(kw.get("socket_errors", 0)),
        status_errors=int(kw.get("status_errors", 0)),
        p50_us=kw.get("p50_us", 1000.0),
        p90_us=kw.get("p90_us", 2000.0),
        p99_us=kw.get("p99_us", 3000.0),
        mean_us=1000.0,
        timed_p50_us=t50,
        timed_p99_us=t99,
    )


def test_wrk_summary_line_is_parsed_among_wrk_text() -> None:
    """The JSON line from post.lua gives req/s, both error kinds and both latency sets."""
    result = parse_wrk_output(
        "Running 2s test\n  64 connections\n" + WRK_LINE + "\nRequests/sec: 1"
    )
    assert result.rps == pytest.approx(1500.0)
    assert result.socket_errors == 6
    assert result.status_errors == 4
    assert result.errors == 10
    assert (result.p50_us, result.p99_us) == (500.0, 1500.0)
    assert (result.timed_p50_us, result.timed_p99_us) == (210.5, 800.0)


def test_timed_percentiles_are_nan_when_no_request_finished() -> None:
    """A timed run that completed nothing reads 'not measured', not a latency of 0."""
    line = WRK_LINE.replace('"timed":3000', '"timed":0')
    result = parse_wrk_output(line)
    assert math.isnan(result.timed_p50_us)
    assert math.isnan(result.timed_p99_us)


def test_wrk_output_without_summary_is_an_error() -> None:
    """A wrk run that died before done() is reported, not read as zero requests."""
    with pytest.raises(ValueError, match="no wrk summary"):
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused")


def test_proc_stat_fields_survive_a_command_name_with_spaces_and_parens() -> None:
    """utime+stime and ppid are found after the last ')' of the command name."""
    line = "1234 (python (worker) x) S 77 1234 1234 0 -1 4194560 1 0 0 0 250 40 0 0 20 0 3 0"
    assert parse_stat_cpu_ticks(line) == 290
    assert parse_stat_ppid(line) == 77


def test_statm_resident_pages_become_kib() -> None:
    """The second statm field is resident pages."""
    assert parse_statm_rss_kib("1000 10 5 1 0 2 0") == 10 * PAGE_KIB


def test_percentile_is_nearest_rank() -> None:
    """Nearest rank: p50 of 1..10 is 5, p99 is 10, no values give NaN."""
    values = [float(v) for v in range(10, 0, -1)]
    assert percentile(values, 50) == 5.0
    assert percentile(values, 99) == 10.0
    assert percentile(values, 100) == 10.0
    assert math.isnan(percentile([], 50))


def _samples() -> list[Sample]:
    out = []
    for repeat, (d50, s50) in enumerate([(50.0, 350.0), (60.0, 310.0), (55.0, 555.0)]):
        out.append(
            Sample(
                "direct",
                repeat,
                wrk(40000),
                latency=wrk(5000, t50=d50, t99=d50 * 10),
                probe=ProbeResult(ttfb_us=[1000.0, 1100.0], chunk_delay_us=[100.0, 120.0]),
            )
        )
        out.append(
            Sample(
                "sidecar",
                repeat,
                wrk(3000 + repeat * 100, status_errors=1),
                cpu_seconds=0.6,
                rss_mib=40.0 + repeat,
                latency=wrk(2000, t50=s50, t99=s50 * 4),
                stream=wrk(2500),
                probe=ProbeResult(ttfb_us=[1400.0, 1500.0], chunk_delay_us=[300.0, 900.0]),
            )
        )
    return out


def test_summary_takes_medians_and_subtracts_direct_per_repeat() -> None:
    """Added latency is the median over repeats of (target - direct in the same repeat)."""
    rows = {r.target: r for r in summarise(_samples(), {"direct": "d", "sidecar": "s"})}
    me = rows["sidecar"]
    assert me.rps_median == pytest.approx(3100.0)
    assert me.cpu_us == pytest.approx(0.6e6 / 3100)
    assert me.added_p50_ms == pytest.approx(0.3)  # diffs 0.30, 0.25, 0.50
    assert me.rss_mib == 42.0
    assert me.errors == 3
    assert me.ttfb_added_p50_ms == pytest.approx(0.4)
    assert me.chunk_added_p99_ms == pytest.approx(0.78)
    assert me.chunk_max_ms == pytest.approx(0.9)
    assert math.isnan(rows["direct"].added_p50_ms)


def test_verdicts_judge_each_target_and_say_what_was_not_measured() -> None:
    """Ratios and ceilings pass or fail; a short soak and a missing peer are n/a."""
    rows = {r.target: r for r in summarise(_samples(), {"direct": "d", "sidecar": "s"})}
    by_goal = {v.goal: v for v in judge(rows, soak=Soak(requests=5000, rss_mib=40.0))}
    assert by_goal["added latency at 1 connection, p50 <= 0.4 ms"].passed is True
    assert by_goal["streaming added TTFB p50 <= 0.8 ms"].passed is True
    assert by_goal["each SSE chunk forwarded <= 1 ms after it arrives (p99)"].passed is True
    assert by_goal[">= 50x LiteLLM's req/s"].passed is None
    assert by_goal["RSS <= 60 MB after 100,000 requests"].passed is None
    assert by_goal["2,000 concurrent slow streams, RSS <= 200 MB, no errors"].mark == "n/a"


def test_verdicts_fail_below_the_passthrough_and_on_stream_errors() -> None:
    """Fewer req/s than the yardstick fails; errors while holding 2,000 streams fail."""
    samples = [*_samples(), Sample("passthrough", 0, wrk(6200))]
    rows = {r.target: r for r in summarise(samples, {"sidecar": "s", "passthrough": "p"})}
    hold = HoldResult(2000, 1990, 10, peak_rss_mib=120.0, seconds=7, failures={"HTTP 504": 10})
    verdicts = {v.goal: v for v in judge(rows, hold=hold)}
    held = verdicts["2,000 concurrent slow streams, RSS <= 200 MB, no errors"]
    assert "(HTTP 504 x10)" in held.measured
    assert verdicts["req/s >= 1.0x the minimal passthrough"].passed is False
    assert "0.50x" in verdicts["req/s >= 1.0x the minimal passthrough"].measured
    assert held.passed is False


def test_tables_show_ratio_to_passthrough_and_na_for_missing_figures() -> None:
    """The throughput table divides by the passthrough row; missing figures read n/a."""
    samples = [*_samples(), Sample("passthrough", 0, wrk(1550))]
    labels = {"direct": "direct", "passthrough": "yard", "sidecar": "side"}
    rows = summarise(samples, labels)
    table = throughput_table(rows)
    assert "| side | 3,100 (3,000-3,200) | 2.00 | 194 |" in table
    assert "| direct |" in table
    assert "n/a" in table
    assert "+0.30 / " in latency_table(rows)


def test_results_page_carries_machine_method_tables_and_notes() -> None:
    """RESULTS.md names the command, the machine and the notes next to the tables."""
    rows = summarise(_samples(), {"direct": "d", "sidecar": "s"})
    page = results_page(
        command="python -m bench",
        machine={"CPUs": "2 x Test CPU"},
        method=["pinned"],
        rows=rows,
        verdicts=judge({r.target: r for r in rows}),
        notes=["hello"],
    )
    for expected in ("`python -m bench`", "- CPUs: 2 x Test CPU", "- pinned", "- hello"):
        assert expected in page


def _feature_rows(noauth_rps: float) -> dict[str, Summary]:
    """Sidecar 400 µs/req at 2,000 req/s; auth bypassed 380 µs; Redis buckets 430 µs."""
    rows = {}
    for name, rps, cpu_us in (
        ("sidecar", 2000.0, 400.0),
        ("sidecar-noauth", noauth_rps, 380.0),
        ("sidecar-redis", 1800.0, 430.0),
    ):
        rows[name] = Summary(target=name, label=name, rps=[rps], cpu_us=cpu_us)
    return rows


def test_feature_costs_are_differences_between_sidecar_rows() -> None:
    """Auth cost is sidecar minus bypassed (and its share); Redis is redis minus sidecar."""
    auth, redis = feature_costs(_feature_rows(noauth_rps=2050.0))
    assert auth.startswith(
        "auth (cached) cost: 20.0 µs/request (5.0% of the sidecar's CPU per request)"
    )
    assert "2,000 with auth, 2,050 bypassed" in auth
    assert redis.startswith("Redis limiter cost: 30.0 µs/request")
    assert feature_costs({"sidecar-noauth": _feature_rows(1.0)["sidecar-noauth"]}) == []
    page_rows = list(_feature_rows(noauth_rps=2050.0).values())
    page = results_page(command="c", machine={}, method=[], rows=page_rows, verdicts=[])
    assert "## Feature costs" in page
    assert "- Redis limiter cost: 30.0 µs/request" in page


def test_auth_verdict_compares_req_s_with_auth_bypassed() -> None:
    """Under 5% fewer req/s than the bypassed row passes, more fails, no row is n/a."""
    rows = _feature_rows(noauth_rps=2050.0)
    cheap = {v.goal: v for v in judge(rows)}[AUTH_GOAL]
    assert cheap.passed is True
    assert cheap.measured.startswith("2.4% fewer req/s (2,000 vs 2,050 with auth bypassed)")
    assert "CPU 5.0% per request" in cheap.measured
    assert {v.goal: v for v in judge(_feature_rows(noauth_rps=2200.0))}[AUTH_GOAL].passed is False
    del rows["sidecar-noauth"]
    assert {v.goal: v for v in judge(rows)}[AUTH_GOAL].passed is None


def test_nginx_config_quotes_the_canned_replies() -> None:
    """Quotes and newlines are escaped so nginx returns the bytes unchanged."""
    assert nginx_string(b"a'b\nc\\d") == "'a\\'b\\nc\\\\d'"
    config = render_config(Path("prefix"), 8123, as_root=False)
    assert "listen 127.0.0.1:8123" in config
    assert "user root" not in config
    assert "text/event-stream" in config


def test_payloads_are_the_documented_shapes() -> None:
    """The reply is 712 bytes of JSON with usage; SSE ends with [DONE]."""
    assert len(CHAT_REPLY) == 712
    assert json.loads(CHAT_REPLY)["usage"]["total_tokens"] == 52
    assert static_sse_body().endswith(b"data: [DONE]\n\n")
    assert json.loads(request_body(stream=True))["stream"] is True


def test_profile_summary_groups_samples_by_owner() -> None:
    """Collapsed stacks are split into frames, owned by distribution or project."""
    site = "/v/lib/python3.11/site-packages"
    raw = [
        f"main (/w/proxy/__main__.py:5);write ({site}/aiohttp/http_writer.py:116) 30",
        f"main (/w/proxy/__main__.py:5);start_span ({site}/opentelemetry/trace/x.py:9) 10",
        "main (/w/proxy/__main__.py:5);run (/usr/lib/python3.11/asyncio/runners.py:118) 10",
        " 5",
        "",
    ]
    stacks = parse_collapsed(raw)
    assert stacks[0][1] == 30
    assert library_of(stacks[1][0][-1]) == "opentelemetry"
    assert library_of(stacks[2][0][-1]) == "stdlib:asyncio"
    assert library_of(stacks[0][0][0]) == "proxy"
    assert short(stacks[0][0][-1]) == "write (aiohttp/http_writer.py:116)"
    assert library_of(stacks[3][0][-1]) == "native"
    assert function_of("f (/w/proxy/a.py:12)") == "f (/w/proxy/a.py)"
    text = summarise_stacks(stacks)
    assert "55 samples" in text
    assert "| 54.5% | `aiohttp` |" in text
    assert "| 90.9% | `main (proxy/__main__.py)` |" in text


def test_quick_plan_is_shorter_and_skips_the_soak() -> None:
    """--quick keeps every step but shortens them and drops the 100k-request soak."""
    quick = Plan().quick()
    assert quick.duration_s < Plan().duration_s
    assert quick.repeats == 1
    assert quick.soak_requests == 0


def test_results_svg_draws_a_bar_per_target_and_figure() -> None:
    """The chart parses as SVG, has three latency bars and one CPU bar per target, and escapes."""
    import xml.etree.ElementTree as ElementTree

    from bench.chart import results_svg
    from bench.stats import Summary

    rows = [
        Summary(
            "passthrough", "aiohttp <passthrough>", cpu_us=173, p50_ms=10, p90_ms=13, p99_ms=21
        ),
        Summary("sidecar", "llm-sidecar & co", cpu_us=276, p50_ms=17, p90_ms=19, p99_ms=32),
        Summary("direct", "direct", p50_ms=0.3, p90_ms=0.4, p99_ms=0.6),
    ]
    svg = results_svg(rows, "run <1>")
    root = ElementTree.fromstring(svg)  # noqa: S314 - our own output, not untrusted input
    bars = [element for element in root.iter() if element.tag.endswith("rect")][1:]
    assert len(bars) == 3 * 3 + 2  # no CPU bar for the row without a CPU figure
    assert "llm-sidecar &amp; co" in svg
    assert "276 µs CPU/req" in svg
