"""AdminService: the use cases behind the ``tenants`` and ``users`` CLI commands.

Input is validated here, before the repository sees it; a raw API key exists
only in the return value of :meth:`AdminService.create_user` and
:meth:`AdminService.rotate_key`, to be shown once.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Final, Literal

from auth.core import keys
from auth.core.errors import NotFound
from auth.core.models import (
    Tenant,
    User,
    validate_budget,
    validate_limit,
    validate_name,
    validate_window,
)
from auth.core.ports import UserRepository


class _Unset(enum.Enum):
    UNSET = enum.auto()


UNSET: Final = _Unset.UNSET
"""Marks an ``update_tenant`` field the caller leaves as it is."""
Unset = Literal[_Unset.UNSET]


def _upstreams(names: Iterable[str] | None) -> frozenset[str] | None:
    if names is None:
        return None
    return frozenset(validate_name("upstream", name) for name in names)


class AdminService:
    """Create and manage tenants, users and their keys."""

    def __init__(self, repo: UserRepository, clock: Callable[[], float] = time.time) -> None:
        self._repo = repo
        self._clock = clock  # wall clock: it stamps created_at

    async def create_tenant(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        burst: int | None = None,
        allowed_upstreams: Iterable[str] | None = None,
        budget_usd: float | None = None,
        budget_window: str = "month",
    ) -> Tenant:
        """A new tenant; ``None`` limits follow the sidecar defaults, no upstreams means all,
        no budget means unlimited spend."""
        tenant = Tenant(
            name=validate_name("tenant", name),
            rpm=validate_limit("rpm", rpm),
            tpm=validate_limit("tpm", tpm),
            burst=validate_limit("burst", burst),
            allowed_upstreams=_upstreams(allowed_upstreams),
            budget_usd=validate_budget(budget_usd),
            budget_window=validate_window(budget_window),
        )
        await self._repo.create_tenant(tenant)
        return tenant

    async def get_tenant(self, name: str) -> Tenant:
        tenant = await self._repo.get_tenant(name)
        if tenant is None:
            raise NotFound(f"no tenant named {name[:80]!r}")
        return tenant

    async def list_tenants(self) -> list[Tenant]:
        return await self._repo.list_tenants()

    async def update_tenant(
        self,
        name: str,
        *,
        rpm: int | Unset | None = UNSET,
        tpm: int | Unset | None = UNSET,
        burst: int | Unset | None = UNSET,
        allowed_upstreams: Iterable[str] | Unset | None = UNSET,
        budget_usd: float | Unset | None = UNSET,
        budget_window: str | Unset = UNSET,
    ) -> Tenant:
        """Change only the fields given; ``None`` resets a limit to the default."""
        current = await self.get_tenant(name)
        updated = dataclasses.replace(
            current,
            rpm=current.rpm if rpm is UNSET else validate_limit("rpm", rpm),
            tpm=current.tpm if tpm is UNSET else validate_limit("tpm", tpm),
            burst=current.burst if burst is UNSET else validate_limit("burst", burst),
            allowed_upstreams=current.allowed_upstreams
            if allowed_upstreams is UNSET
            else _upstreams(allowed_upstreams),
            budget_usd=current.budget_usd if budget_usd is UNSET else validate_budget(budget_usd),
            budget_window=current.budget_window
            if budget_window is UNSET
            else validate_window(budget_window),
        )
        await self._repo.update_tenant(updated)
        return updated

    async def delete_tenant(self, name: str, *, cascade: bool = False) -> None:
        """Refuses (TenantNotEmpty) while users belong to the tenant, unless ``cascade``."""
        await self._repo.delete_tenant(name, cascade=cascade)

    async def create_user(
        self, name: str, *, tenant: str, budget_usd: float | None = None
    ) -> tuple[User, str]:
        """A new enabled user and its raw API key (shown once, stored as a digest)."""
        user = User(
            name=validate_name("user", name),
            tenant=tenant,
            enabled=True,
            created_at=datetime.fromtimestamp(self._clock(), UTC),
            budget_usd=validate_budget(budget_usd),
        )
        raw_key = keys.generate()
        await self._repo.create_user(user, keys.digest(raw_key))
        return user, raw_key

    async def get_user(self, name: str) -> User:
        user = await self._repo.get_user(name)
        if user is None:
            raise NotFound(f"no user named {name[:80]!r}")
        return user

    async def list_users(self, tenant: str | None = None) -> list[User]:
        if tenant is not None:
            await self.get_tenant(tenant)  # an unknown tenant is an error, not an empty list
        return await self._repo.list_users(tenant)

    async def set_user_budget(self, name: str, budget_usd: float | None) -> None:
        """A user's own budget within its tenant's window; ``None``: unlimited."""
        await self._repo.set_user_budget(name, validate_budget(budget_usd))

    async def disable_user(self, name: str) -> None:
        await self._repo.set_user_enabled(name, False)

    async def enable_user(self, name: str) -> None:
        await self._repo.set_user_enabled(name, True)

    async def rotate_key(self, name: str) -> str:
        """A new raw key for the user; the old one stops resolving at once (caches: TTL)."""
        raw_key = keys.generate()
        await self._repo.rotate_key(name, keys.digest(raw_key))
        return raw_key
