"""In-memory stand-ins shared by the unit and integration tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class FakeCaller:
    """What the authenticator hands the core: a tenant, its user and its limits."""

    tenant: str = "acme"
    user: str = "alice"
    rpm: int | None = None
    tpm: int | None = None
    burst: int | None = None
    allowed_upstreams: frozenset[str] | None = None
