"""InMemoryUserRepository: the UserRepository port in a dict, for tests and demos."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import date

from auth.core.errors import DuplicateName, NotFound, TenantNotEmpty, tenant_not_empty_message
from auth.core.models import KeyRecord, Principal, Tenant, User
from auth.core.spend import SpendDelta, SpendLine, SpendTotal, month_start


class InMemoryUserRepository:
    """Process-local, non-persistent user store with the same semantics as the SQL ones."""

    def __init__(self) -> None:
        self._tenants: dict[str, Tenant] = {}
        self._users: dict[str, User] = {}
        self._digest_by_user: dict[str, str] = {}
        self._user_by_digest: dict[str, str] = {}
        self._spend: dict[tuple[date, str, str, str], list[int]] = {}

    async def migrate(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def find_key(self, key_digest: str) -> KeyRecord | None:
        name = self._user_by_digest.get(key_digest)
        if name is None:
            return None
        user = self._users[name]
        tenant = self._tenants[user.tenant]
        principal = Principal(
            tenant=tenant.name,
            user=user.name,
            rpm=tenant.rpm,
            tpm=tenant.tpm,
            burst=tenant.burst,
            allowed_upstreams=tenant.allowed_upstreams,
            tenant_budget_usd=tenant.budget_usd,
            user_budget_usd=user.budget_usd,
            budget_window=tenant.budget_window,
        )
        return KeyRecord(key_digest=key_digest, principal=principal, enabled=user.enabled)

    async def create_tenant(self, tenant: Tenant) -> None:
        if tenant.name in self._tenants:
            raise DuplicateName(f"tenant {tenant.name!r} already exists")
        self._tenants[tenant.name] = tenant

    async def get_tenant(self, name: str) -> Tenant | None:
        return self._tenants.get(name)

    async def list_tenants(self) -> list[Tenant]:
        return [self._tenants[name] for name in sorted(self._tenants)]

    async def update_tenant(self, tenant: Tenant) -> None:
        if tenant.name not in self._tenants:
            raise NotFound(f"no tenant named {tenant.name!r}")
        self._tenants[tenant.name] = tenant

    async def delete_tenant(self, name: str, *, cascade: bool = False) -> None:
        if name not in self._tenants:
            raise NotFound(f"no tenant named {name!r}")
        members = [user.name for user in self._users.values() if user.tenant == name]
        if members and not cascade:
            raise TenantNotEmpty(tenant_not_empty_message(name, len(members)))
        for member in members:
            del self._users[member]
            del self._user_by_digest[self._digest_by_user.pop(member)]
        del self._tenants[name]

    async def create_user(self, user: User, key_digest: str) -> None:
        if user.tenant not in self._tenants:
            raise NotFound(f"no tenant named {user.tenant!r}")
        if user.name in self._users or key_digest in self._user_by_digest:
            raise DuplicateName(f"user {user.name!r} already exists")
        self._users[user.name] = user
        self._digest_by_user[user.name] = key_digest
        self._user_by_digest[key_digest] = user.name

    async def get_user(self, name: str) -> User | None:
        return self._users.get(name)

    async def list_users(self, tenant: str | None = None) -> list[User]:
        return [
            self._users[name]
            for name in sorted(self._users)
            if tenant is None or self._users[name].tenant == tenant
        ]

    async def set_user_enabled(self, name: str, enabled: bool) -> None:
        user = self._users.get(name)
        if user is None:
            raise NotFound(f"no user named {name!r}")
        self._users[name] = dataclasses.replace(user, enabled=enabled)

    async def set_user_budget(self, name: str, budget_usd: float | None) -> None:
        user = self._users.get(name)
        if user is None:
            raise NotFound(f"no user named {name!r}")
        self._users[name] = dataclasses.replace(user, budget_usd=budget_usd)

    async def record_spend(self, deltas: Sequence[SpendDelta], today: date) -> list[SpendTotal]:
        for d in deltas:
            row = self._spend.setdefault((d.day, d.tenant, d.user, d.model), [0] * 5)
            for index, value in enumerate(
                (d.cost_nanos, d.input_tokens, d.output_tokens, d.requests, d.unpriced_requests)
            ):
                row[index] += value
        totals: dict[tuple[str, str], list[int]] = {}
        first = month_start(today)
        for (day, tenant, user, _model), row in self._spend.items():
            if first <= day <= today:
                total = totals.setdefault((tenant, user), [0, 0])
                total[0] += row[0] if day == today else 0
                total[1] += row[0]
        return [SpendTotal(t, u, day, month) for (t, u), (day, month) in totals.items()]

    async def spend_report(self, since: date, tenant: str | None = None) -> list[SpendLine]:
        sums: dict[tuple[str, str, str], list[int]] = {}
        for (day, owner, user, model), row in self._spend.items():
            if day >= since and (tenant is None or owner == tenant):
                line = sums.setdefault((owner, user, model), [0] * 5)
                for index, value in enumerate(row):
                    line[index] += value
        return [SpendLine(*key, *sums[key]) for key in sorted(sums)]

    async def rotate_key(self, name: str, new_key_digest: str) -> None:
        if name not in self._users:
            raise NotFound(f"no user named {name!r}")
        if new_key_digest in self._user_by_digest:
            raise DuplicateName("key digest already in use")
        del self._user_by_digest[self._digest_by_user[name]]
        self._digest_by_user[name] = new_key_digest
        self._user_by_digest[new_key_digest] = name

    async def close(self) -> None:
        return None
