"""Domain records of the auth hexagon: tenants, users, and the principal a key resolves to."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from auth.core.errors import InvalidInput

# Names become metric labels and CLI arguments: short, printable, no separators.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE: Final = "1-64 characters of [A-Za-z0-9._-], starting with a letter or digit"
BudgetWindow = Literal["day", "month"]
BUDGET_WINDOWS: Final = ("day", "month")
MAX_BUDGET_USD: Final = 1e9


@dataclass(frozen=True, slots=True)
class Tenant:
    """A group of users sharing limits; ``None`` limits mean the sidecar defaults."""

    name: str
    rpm: int | None = None
    tpm: int | None = None
    burst: int | None = None
    allowed_upstreams: frozenset[str] | None = None
    """``None`` means every upstream; an empty set means none."""
    budget_usd: float | None = None
    """Spend allowed per window in USD; ``None`` means unlimited."""
    budget_window: BudgetWindow = "month"
    """The UTC calendar window of the tenant's and its users' budgets."""


@dataclass(frozen=True, slots=True)
class User:
    """A caller identity; its API key lives in the repository as a digest only."""

    name: str
    tenant: str
    enabled: bool
    created_at: datetime
    budget_usd: float | None = None
    """Spend allowed per tenant window in USD; ``None`` means unlimited."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who an API key belongs to; structurally a ``proxy.core.ports.Caller``."""

    tenant: str
    user: str
    rpm: int | None
    tpm: int | None
    burst: int | None
    allowed_upstreams: frozenset[str] | None
    tenant_budget_usd: float | None = None
    user_budget_usd: float | None = None
    budget_window: BudgetWindow = "month"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the repository returns for a key digest: the principal and its state."""

    key_digest: str
    principal: Principal
    enabled: bool


def validate_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid tenant/user/upstream name, else raise InvalidInput."""
    if _NAME.fullmatch(name) is None:
        raise InvalidInput(f"invalid {kind} name {name[:80]!r}: use {NAME_RULE}")
    return name


MAX_LIMIT = 2**63 - 1
"""The largest limit both repositories store (SQLite INTEGER, PostgreSQL BIGINT)."""


def validate_limit(kind: str, value: int | None) -> int | None:
    """Limits are positive 64-bit integers or ``None`` (use the sidecar default)."""
    if value is not None and (isinstance(value, bool) or not 1 <= value <= MAX_LIMIT):
        raise InvalidInput(f"{kind} must be a positive integer up to {MAX_LIMIT}, got {value!r}")
    return value


def validate_budget(value: float | None) -> float | None:
    """Budgets are finite, non-negative dollar amounts, or ``None`` (unlimited)."""
    if value is None:
        return None
    if isinstance(value, bool) or not 0 <= value <= MAX_BUDGET_USD:
        raise InvalidInput(f"budget must be between 0 and {MAX_BUDGET_USD:.0f} USD, got {value!r}")
    return float(value)


def validate_window(value: str) -> BudgetWindow:
    if value == "day":
        return "day"
    if value == "month":
        return "month"
    raise InvalidInput(f"budget window must be 'day' or 'month', got {value[:20]!r}")
