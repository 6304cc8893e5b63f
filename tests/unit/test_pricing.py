"""Prices and costs: the built-in table, overrides, and costs to the micro-dollar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.core.pricing import Price, PriceTable, usd
from proxy.core.usage import Usage, usage_from_json
from proxy.core.usage_sse import SseUsageScanner
from proxy.entrypoints.prices import PricesError, load_prices
from proxy.settings import Settings, SettingsError, load_settings

OPENAI_JSON = {
    "id": "chatcmpl-1",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [],
    "usage": {
        "prompt_tokens": 2000,
        "completion_tokens": 300,
        "prompt_tokens_details": {"cached_tokens": 1024},
    },
}
GROQ_SSE = (
    b'data: {"id":"c","model":"llama-3.1-8b-instant","choices":[{"delta":{"content":"hi"}}]}\n\n'
    b'data: {"id":"c","model":"llama-3.1-8b-instant","choices":[],'
    b'"x_groq":{"usage":{"prompt_tokens":1200,"completion_tokens":800}}}\n\n'
    b"data: [DONE]\n\n"
)


def _cost(table: PriceTable, upstream: str, usage: Usage, model: str) -> float | None:
    price = table.price(upstream, model)
    if price is None:
        return None
    return usd(
        price.cost_nanos(
            usage.input_tokens,
            usage.output_tokens,
            usage.cached_input_tokens,
            usage.cache_write_tokens,
        )
    )


def test_builtin_table_has_source_date_and_the_three_providers() -> None:
    """The versioned table names its source and date and prices OpenAI, Groq and Anthropic."""
    raw = json.loads((Path(__file__).parents[2] / "proxy" / "prices.json").read_text())
    assert raw["source"]
    assert raw["date"]
    table = load_prices()
    for upstream, model in (
        ("openai", "gpt-4o-mini"),
        ("groq", "llama-3.3-70b-versatile"),
        ("anthropic", "claude-sonnet-4-5"),
    ):
        assert table.price(upstream, model) is not None


def test_openai_json_cost_prices_cached_input_as_such() -> None:
    """2,000 prompt tokens (1,024 cached) and 300 output cost exactly what the table says."""
    usage = usage_from_json(json.dumps(OPENAI_JSON).encode())
    assert usage is not None
    assert usage.cached_input_tokens == 1024
    # (976 x 0.15 + 1024 x 0.075 + 300 x 0.60) / 1e6 USD
    expected = (976 * 0.15 + 1024 * 0.075 + 300 * 0.60) / 1e6
    cost = _cost(load_prices(), "openai", usage, "gpt-4o-mini")
    assert cost == pytest.approx(expected, abs=1e-9)
    assert round(cost * 1e6, 3) == 403.2  # micro-dollars


def test_dated_snapshot_is_priced_as_its_family() -> None:
    """The response's dated model name finds the family's price."""
    table = load_prices()
    assert table.price("openai", "gpt-4o-mini-2024-07-18") == table.price("openai", "gpt-4o-mini")
    assert table.price("anthropic", "claude-sonnet-4-20250514") is not None


def test_groq_sse_cost_from_x_groq_usage() -> None:
    """A Groq stream's x_groq usage is priced at the groq/ entry."""
    scanner = SseUsageScanner()
    scanner.feed(GROQ_SSE)
    usage = scanner.result()
    assert usage is not None
    cost = _cost(load_prices(), "groq", usage, "llama-3.1-8b-instant")
    assert cost == pytest.approx((1200 * 0.05 + 800 * 0.08) / 1e6, abs=1e-12)


def test_anthropic_usage_prices_cache_reads_and_writes() -> None:
    """Cache reads at cached_input, cache writes at cache_write, the rest at input."""
    usage = Usage(10_000, 500, cached_input_tokens=6_000, cache_write_tokens=2_000)
    cost = _cost(load_prices(), "anthropic", usage, "claude-sonnet-4-5")
    expected = (2_000 * 3.0 + 6_000 * 0.3 + 2_000 * 3.75 + 500 * 15.0) / 1e6
    assert cost == pytest.approx(expected, abs=1e-12)


def test_cache_writes_default_to_the_input_price() -> None:
    """A table entry without cache_write prices cache writes as input."""
    price = Price(input=1.0, output=2.0, cached_input=0.5, cache_write=1.0)
    assert price.cost_nanos(100, 0, cache_write=100) == price.cost_nanos(100, 0)


def test_unknown_model_has_no_price() -> None:
    """A model missing from the table has an unknown cost, not zero."""
    table = load_prices()
    assert table.price("openai", "fake-model") is None
    assert table.price("openai", None) is None


def test_overrides_file_adds_and_upstream_keys_win(tmp_path: Path) -> None:
    """LLM_SIDECAR_PRICES_FILE entries add or replace; upstream/model beats the bare model."""
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps(
            {
                "fake-model": {"input": 1.0, "output": 2.0},
                "groq/fake-model": {"input": 5.0, "cached_input": 1.0, "output": 6.0},
                "gpt-4o-mini": {"input": 0.2, "output": 0.8},
            }
        )
    )
    table = load_prices(prices)
    assert table.price("openai", "fake-model") == Price(1.0, 2.0, 1.0, 1.0)
    assert table.price("groq", "fake-model") == Price(5.0, 6.0, 1.0, 5.0)
    assert table.price("openai", "gpt-4o-mini") == Price(0.2, 0.8, 0.2, 0.2)


def test_bad_prices_file_stops_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prices file with a negative price is a settings error naming the variable."""
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"m": {"input": -1, "output": 1}}))
    with pytest.raises(PricesError):
        load_prices(prices)
    monkeypatch.setenv("LLM_SIDECAR_PRICES_FILE", str(prices))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert any("LLM_SIDECAR_PRICES_FILE" in problem for problem in caught.value.problems)
    monkeypatch.setenv("LLM_SIDECAR_PRICES_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(SettingsError):
        load_settings()
    assert Settings.model_fields["prices_file"].default is None
