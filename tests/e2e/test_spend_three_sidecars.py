"""Three sidecar processes on one PostgreSQL share a USD budget (issue 16, ADR 0100).

Each sidecar serves its own user of one budgeted tenant; concurrent load through all
three (the official ``openai`` SDK, over sockets to the fake upstream) runs until the
budget stops it. ADR 0100 bounds the overspend of N sidecars by
``sum_i (s_i x (F + r) + w_i)``: ``s_i`` sidecar *i*'s spend rate, ``F`` the flush
interval, ``r`` one flush round trip, ``w_i`` its worst cases in flight. The test measures
each term rather than assuming it: ``s_i`` from the answers each sidecar gave, ``r`` by
timing the flush's own repository transaction during the load, ``w_i`` from the request's
reservation (its token estimate at the dearer price) times the callers per sidecar.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest

from auth.adapters.repo_postgres import PostgresUserRepository
from proxy.core.pricing import NANOS_PER_USD
from proxy.core.usage import estimate_request_tokens
from tests.conftest import sidecar_env
from tests.support import leak_scan
from tests.support.fake_upstream import FakeUpstream
from tests.support.postgres import fresh_database
from tests.support.sidecar import SidecarProcess

SIDECARS = 3
CALLERS = 6
"""Concurrent callers per sidecar: the most it has in flight."""
FLUSH_SECONDS = 1.0
"""``F``: the default ``LLM_SIDECAR_SPEND_FLUSH_SECONDS``, the ADR's case."""
MODEL = "slow"
"""The fake answers it after 0.5 s, with 11 prompt and 7 completion tokens."""
PRICE = {"input": 100.0, "output": 400.0}
"""USD per 1M tokens; output dearer than input, as in real price tables. A reservation
(estimate 18 tokens at the output price) is then above an answer's cost (11 + 7 tokens)."""
COST_NANOS = round((11 * PRICE["input"] + 7 * PRICE["output"]) * NANOS_PER_USD / 1e6)
MESSAGES = [{"role": "user", "content": "hi"}]
MAX_TOKENS = 10
BUDGET_USD = 0.5
"""About 128 answers: some 3.5 s of load at 36 answers a second."""
QUIET_SECONDS = 2 * FLUSH_SECONDS + 0.5
"""Load stops once nothing was admitted anywhere for this long (every view caught up)."""
REFUSED_PAUSE_SECONDS = 0.05
REMAINING = "x-llm-sidecar-budget-remaining-usd"
Refusal = tuple[int, str | None, str | None, str | None, str | None, str | None]
"""Status, error type and code, ``x-should-retry``, ``retry-after``, budget remaining."""
BUDGET_SPENT: Refusal = (429, "insufficient_quota", "insufficient_quota", "false", None, "0.000000")


@dataclass
class Tally:
    """What the callers of one sidecar saw."""

    answered_at: list[float] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)

    def spend_rate_nanos(self) -> float:
        """``s_i``: spend settled per second, between its first and its last answer."""
        span = self.answered_at[-1] - self.answered_at[0]
        return (len(self.answered_at) - 1) * COST_NANOS / span


def _worst_case_nanos() -> int:
    """One request's reservation: its token estimate at the dearer price (ADR 0100)."""
    payload = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    tokens = estimate_request_tokens(payload, default_max_output_tokens=MAX_TOKENS)
    return round(tokens * max(PRICE.values()) * NANOS_PER_USD / 1e6)


def _refusal(exc: openai.APIStatusError) -> Refusal:
    headers = exc.response.headers
    return (
        exc.status_code,
        exc.type,
        exc.code,
        headers.get("x-should-retry"),
        headers.get("retry-after"),
        headers.get(REMAINING),
    )


async def _load(clients: list[openai.AsyncOpenAI]) -> list[Tally]:
    """``CALLERS`` callers per sidecar until none is admitted for ``QUIET_SECONDS``."""
    tallies = [Tally() for _ in clients]
    answered, done = asyncio.Event(), asyncio.Event()

    async def call(client: openai.AsyncOpenAI, tally: Tally) -> None:
        while not done.is_set():
            try:
                await client.chat.completions.create(
                    model=MODEL,
                    messages=MESSAGES,  # type: ignore[arg-type]
                    max_tokens=MAX_TOKENS,
                )
            except openai.APIStatusError as exc:
                tally.refusals.append(_refusal(exc))
                await asyncio.sleep(REFUSED_PAUSE_SECONDS)
                continue
            tally.answered_at.append(time.monotonic())
            answered.set()

    async def watch() -> None:
        while True:
            answered.clear()
            try:
                async with asyncio.timeout(QUIET_SECONDS):
                    await answered.wait()
            except TimeoutError:
                break
        done.set()

    callers = [
        call(client, tally)
        for client, tally in zip(clients, tallies, strict=True)
        for _ in range(CALLERS)
    ]
    await asyncio.gather(watch(), *callers)
    return tallies


async def _time_round_trips(repo: PostgresUserRepository, seen: list[float]) -> None:
    """``r``: the flush's transaction (write nothing, read every total), timed under load."""
    while True:
        today = datetime.now(UTC).date()
        started = time.perf_counter()
        await repo.record_spend([], today)
        seen.append(time.perf_counter() - started)
        await asyncio.sleep(0.1)


def _logged_cost_nanos(process: SidecarProcess) -> tuple[int, int]:
    """Answers (status 200) in the sidecar's access lines, and the sum of their cost."""
    lines = [json.loads(line) for line in process.logs().splitlines() if line.startswith("{")]
    answered = [line for line in lines if line.get("event") == "request" and line["status"] == 200]
    return len(answered), sum(round(line["cost_usd"] * NANOS_PER_USD) for line in answered)


@pytest.mark.postgres
async def test_three_sidecars_overspend_no_more_than_the_adrs_bound(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Three sidecars on one PostgreSQL under load: 429 once spent, overspend within ADR
    0100's bound for N=3, and every logged cost in the ledger after a graceful stop."""
    worst_case = _worst_case_nanos()
    assert worst_case >= COST_NANOS  # else each answer would add its excess to the bound
    budget = round(BUDGET_USD * NANOS_PER_USD)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({MODEL: PRICE}))
    async with fresh_database("llmsc_three") as url:
        env = sidecar_env(
            fake_upstream,
            LLM_SIDECAR_DATABASE_URL=url,
            LLM_SIDECAR_PRICES_FILE=str(prices),
            LLM_SIDECAR_SPEND_FLUSH_SECONDS=str(FLUSH_SECONDS),
            LLM_SIDECAR_DEFAULT_RPM="100000",
        )
        sidecars = [SidecarProcess(tmp_path / f"sidecar-{i}", env=env) for i in range(SIDECARS)]
        admin = sidecars[0]
        admin.cli(
            "tenants", "create", "acme", "--tpm", "100000000", "--budget-usd", str(BUDGET_USD)
        )
        keys = []
        for index in range(SIDECARS):
            created = admin.cli("users", "create", f"user-{index}", "--tenant", "acme")
            keys.append(created.stdout.strip().splitlines()[-1])
            leak_scan.add_secret(keys[-1])
        repo = PostgresUserRepository(url)
        round_trips: list[float] = []
        await repo.record_spend([], datetime.now(UTC).date())  # connected: r is a round trip
        clients = [
            openai.AsyncOpenAI(
                base_url=f"{sidecar.url}/openai/v1", api_key=key, max_retries=0, timeout=10
            )
            for sidecar, key in zip(sidecars, keys, strict=True)
        ]
        try:
            await asyncio.gather(*(asyncio.to_thread(sidecar.start) for sidecar in sidecars))
            timer = asyncio.create_task(_time_round_trips(repo, round_trips))
            try:
                tallies = await _load(clients)
            finally:
                timer.cancel()
            for client in clients:  # spent everywhere: each sidecar refuses the next call
                with pytest.raises(openai.RateLimitError) as refused:
                    await client.chat.completions.create(
                        model=MODEL,
                        messages=MESSAGES,  # type: ignore[arg-type]
                        max_tokens=MAX_TOKENS,
                    )
                assert _refusal(refused.value) == BUDGET_SPENT
        finally:
            codes = await asyncio.gather(*(asyncio.to_thread(s.stop) for s in sidecars))
            for client in clients:
                await client.close()
            await repo.close()
        assert codes == [0] * SIDECARS, [sidecar.logs()[-3000:] for sidecar in sidecars]
        report = json.loads(admin.cli("spend", "--tenant", "acme", "--json").stdout)

    for tally in tallies:
        assert tally.answered_at, "a sidecar served nothing"
        assert tally.refusals, "a sidecar was never stopped"
        assert set(tally.refusals) == {BUDGET_SPENT}
    # Nothing lost: what each sidecar logged is what the ledger holds for its user.
    ledger = {line["user"]: line for line in report["lines"]}
    assert set(ledger) == {f"user-{index}" for index in range(SIDECARS)}
    for index, (sidecar, tally) in enumerate(zip(sidecars, tallies, strict=True)):
        answered, logged = _logged_cost_nanos(sidecar)
        line = ledger[f"user-{index}"]
        assert answered == len(tally.answered_at) == line["requests"]
        assert logged == answered * COST_NANOS == round(line["cost_usd"] * NANOS_PER_USD)
    total = round(report["total_cost_usd"] * NANOS_PER_USD)
    assert total == sum(len(tally.answered_at) for tally in tallies) * COST_NANOS
    # ADR 0100: overspend <= sum_i (s_i x (F + r) + w_i), every term measured. Not a strict
    # worst case: another sidecar's spend may reach a view up to 2 (F + r) late (unflushed
    # there, then an old view here); the w_i term's slack (reservations above costs) covers it.
    r = statistics.median(round_trips)
    bound = sum(
        tally.spend_rate_nanos() * (FLUSH_SECONDS + r) + CALLERS * worst_case for tally in tallies
    )
    overspend = total - budget
    figures = (
        f"budget ${budget / NANOS_PER_USD:.6f}, spent ${total / NANOS_PER_USD:.6f},"
        f" overspend ${overspend / NANOS_PER_USD:.6f} ({overspend / COST_NANOS:.1f} answers),"
        f" bound ${bound / NANOS_PER_USD:.6f} ({bound / COST_NANOS:.1f} answers);"
        f" s_i = {[round(t.spend_rate_nanos() / NANOS_PER_USD, 4) for t in tallies]} USD/s,"
        f" F = {FLUSH_SECONDS} s, r = {r * 1000:.1f} ms (max {max(round_trips) * 1000:.1f}),"
        f" w_i = {CALLERS} x ${worst_case / NANOS_PER_USD:.6f}"
    )
    print(figures)  # the measured figures, for the record (pytest -s)
    assert 0 <= overspend <= bound, figures
