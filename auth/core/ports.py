"""The port of the auth hexagon: what it needs from a user store.

Adapters (in-memory, SQLite, PostgreSQL) implement it structurally. Every method
raises :class:`~auth.core.errors.RepositoryUnavailable` when the store cannot be
reached, never a driver error; the admin methods raise ``DuplicateName``,
``NotFound`` or ``TenantNotEmpty`` as documented.
"""

from __future__ import annotations

from typing import Protocol

from auth.core.models import KeyRecord, Tenant, User
from auth.core.spend import SpendStore


class UserRepository(SpendStore, Protocol):
    async def migrate(self) -> None:
        """Create or upgrade the schema; idempotent and safe to run concurrently."""
        ...

    async def ping(self) -> None:
        """Return once the store answers; raise ``RepositoryUnavailable`` otherwise."""
        ...

    async def find_key(self, key_digest: str) -> KeyRecord | None:
        """The user and tenant owning a key digest (enabled or not), or ``None``."""
        ...

    async def create_tenant(self, tenant: Tenant) -> None:
        """Raises ``DuplicateName``."""
        ...

    async def get_tenant(self, name: str) -> Tenant | None: ...

    async def list_tenants(self) -> list[Tenant]:
        """Sorted by name."""
        ...

    async def update_tenant(self, tenant: Tenant) -> None:
        """Replace a tenant's limits and upstreams; raises ``NotFound``."""
        ...

    async def delete_tenant(self, name: str, *, cascade: bool = False) -> None:
        """Raises ``NotFound``; ``TenantNotEmpty`` while users belong to it, unless
        ``cascade`` (then its users and their keys go too)."""
        ...

    async def create_user(self, user: User, key_digest: str) -> None:
        """Raises ``DuplicateName``, or ``NotFound`` for an unknown tenant."""
        ...

    async def get_user(self, name: str) -> User | None: ...

    async def list_users(self, tenant: str | None = None) -> list[User]:
        """Sorted by name; all users, or those of one tenant."""
        ...

    async def set_user_enabled(self, name: str, enabled: bool) -> None:
        """Raises ``NotFound``."""
        ...

    async def set_user_budget(self, name: str, budget_usd: float | None) -> None:
        """Replace a user's budget (``None``: unlimited). Raises ``NotFound``."""
        ...

    async def rotate_key(self, name: str, new_key_digest: str) -> None:
        """Replace a user's key digest; the old key stops resolving. Raises ``NotFound``."""
        ...

    async def close(self) -> None: ...
