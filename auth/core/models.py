"""Domain records of the auth hexagon: tenants, users, and the principal a key resolves to."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from auth.core.errors import InvalidInput

# Names become metric labels and CLI arguments: short, printable, no separators.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE: Final = "1-64 characters of [A-Za-z0-9._-], starting with a letter or digit"


@dataclass(frozen=True, slots=True)
class Tenant:
    """A group of users sharing limits; ``None`` limits mean the sidecar defaults."""

    name: str
    rpm: int | None = None
    tpm: int | None = None
    burst: int | None = None
    allowed_upstreams: frozenset[str] | None = None
    """``None`` means every upstream; an empty set means none."""


@dataclass(frozen=True, slots=True)
class User:
    """A caller identity; its API key lives in the repository as a digest only."""

    name: str
    tenant: str
    enabled: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Principal:
    """Who an API key belongs to; structurally a ``proxy.core.ports.Caller``."""

    tenant: str
    user: str
    rpm: int | None
    tpm: int | None
    burst: int | None
    allowed_upstreams: frozenset[str] | None


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


def validate_limit(kind: str, value: int | None) -> int | None:
    """Limits are positive integers or ``None`` (use the sidecar default)."""
    if value is not None and (isinstance(value, bool) or value < 1):
        raise InvalidInput(f"{kind} must be a positive integer, got {value!r}")
    return value
