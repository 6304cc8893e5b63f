"""Loading the price table: the built-in ``proxy/prices.json`` plus ``LLM_SIDECAR_PRICES_FILE``.

Validated once at start with pydantic (garbage never reaches the core); the core reads
the result from a plain dict (:class:`~proxy.core.pricing.PriceTable`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from proxy.core.pricing import Price, PriceTable

BUILTIN_PRICES = Path(__file__).resolve().parents[1] / "prices.json"
UsdPerMillion = Annotated[float, Field(ge=0, le=100_000)]


class PriceEntry(BaseModel):
    """One model's prices, USD per 1M tokens; cached input and cache writes default to input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: UsdPerMillion
    output: UsdPerMillion
    cached_input: UsdPerMillion | None = None
    cache_write: UsdPerMillion | None = None

    def price(self) -> Price:
        cached = self.input if self.cached_input is None else self.cached_input
        written = self.input if self.cache_write is None else self.cache_write
        return Price(self.input, self.output, cached, written)


ModelName = Annotated[str, Field(min_length=1, max_length=200)]


class PriceOverrides(RootModel[dict[ModelName, PriceEntry]]):
    """``LLM_SIDECAR_PRICES_FILE``: ``{"gpt-4o-mini": {"input": 0.15, ...}}``."""


class BuiltinPrices(BaseModel):
    """The versioned table: where the figures come from, when, and the figures."""

    model_config = ConfigDict(extra="forbid")

    source: str
    date: str
    prices: dict[ModelName, PriceEntry]


class PricesError(ValueError):
    """The prices file cannot be used; the message names the problem, not a path's content."""


def load_prices(overrides_file: Path | None = None) -> PriceTable:
    """The built-in table with ``overrides_file``'s entries added or replacing theirs."""
    builtin = BuiltinPrices.model_validate_json(BUILTIN_PRICES.read_bytes())
    entries = dict(builtin.prices)
    if overrides_file is not None:
        entries.update(read_overrides(overrides_file))
    return PriceTable({name: entry.price() for name, entry in entries.items()})


def read_overrides(path: Path) -> dict[str, PriceEntry]:
    """The entries of a prices file; raises :class:`PricesError` with one clear line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PricesError(f"cannot read {str(path)!r} ({exc.strerror or exc})") from None
    try:
        return PriceOverrides.model_validate_json(data).root
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        raise PricesError(f"{where}: {error['msg']}") from None
