"""What a response cost, in dollars: a price table read from a plain dict on the hot path.

Prices are USD per million tokens, so a token count times a price is micro-dollars. Costs
are kept as integer nano-dollars (``NANOS_PER_USD``) wherever they are added up, so a
month of small requests sums without float drift.

Token semantics (:class:`~proxy.core.usage.Usage`): ``input_tokens`` counts every prompt
token, cached reads and cache writes included (OpenAI's ``prompt_tokens``);
``cached_input_tokens`` of them are priced at ``cached_input`` and ``cache_write_tokens``
at ``cache_write`` (the input price when the table has none).

A model with no price has an unknown cost, never zero: :meth:`PriceTable.price` returns
``None`` and the caller records ``cost_usd: null``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

NANOS_PER_USD = 1_000_000_000
_NANOS_PER_MICRO = 1_000
_MAX_MEMO = 1024
# Dated snapshots ("gpt-4o-mini-2024-07-18", "claude-sonnet-4-20250514") priced as their family.
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens of each kind."""

    input: float
    output: float
    cached_input: float
    cache_write: float

    def cost_nanos(
        self, input_tokens: int, output_tokens: int, cached_input: int = 0, cache_write: int = 0
    ) -> int:
        """The cost of a usage in nano-dollars (rounded once, at the end)."""
        cached = min(cached_input, input_tokens)
        written = min(cache_write, input_tokens - cached)
        plain = input_tokens - cached - written
        micros = (
            plain * self.input
            + cached * self.cached_input
            + written * self.cache_write
            + output_tokens * self.output
        )
        return round(micros * _NANOS_PER_MICRO)

    def worst_case_nanos(self, tokens: int) -> int:
        """``tokens`` (an estimate of prompt plus output cap) at the dearer of the two prices."""
        return round(tokens * max(self.input, self.output, self.cache_write) * _NANOS_PER_MICRO)


class PriceTable:
    """Prices by ``upstream/model`` (preferred) or bare ``model``; lookups memoised."""

    __slots__ = ("_memo", "_prices")

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)
        self._memo: dict[tuple[str, str], Price | None] = {}

    def __len__(self) -> int:
        return len(self._prices)

    def price(self, upstream: str, model: str | None) -> Price | None:
        """The price of ``model`` on ``upstream``, or ``None`` (unknown cost)."""
        if not model:
            return None
        key = (upstream, model)
        try:
            return self._memo[key]
        except KeyError:
            pass
        found = self._find(upstream, model)
        if len(self._memo) < _MAX_MEMO:  # model names come from callers: keep it bounded
            self._memo[key] = found
        return found

    def _find(self, upstream: str, model: str) -> Price | None:
        prices = self._prices
        for name in (model, _DATE_SUFFIX.sub("", model)):
            found = prices.get(f"{upstream}/{name}") or prices.get(name)
            if found is not None:
                return found
        return None


def usd(nanos: int) -> float:
    """Nano-dollars as dollars (what logs, spans and metrics show)."""
    return nanos / NANOS_PER_USD


def nanos(dollars: float) -> int:
    """Dollars as nano-dollars (budgets)."""
    return round(dollars * NANOS_PER_USD)
