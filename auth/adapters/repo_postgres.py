"""PostgresUserRepository: one user base shared by many sidecars, over an asyncpg pool.

The pool is created lazily on first use and again after a failed attempt, so a
sidecar that starts while the database is down, or loses it later, recovers by
itself once it answers; until then every call raises RepositoryUnavailable, promptly:
concurrent callers share one connection attempt and, after a failure, fail at once
for a short back-off (:mod:`auth.adapters.pool_postgres`). The schema is migrated
under a transaction-scoped advisory lock, once per pool.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import date
from typing import Final, TypeVar

import asyncpg

from auth.adapters import spend_postgres
from auth.adapters.pool_postgres import (
    BACKOFF_FIRST_SECONDS,
    BACKOFF_MAX_SECONDS,
    UNAVAILABLE,
    PostgresPool,
    unavailable,
)
from auth.adapters.schema_postgres import Connection, migrate_schema
from auth.core.errors import (
    DuplicateName,
    NotFound,
    TenantNotEmpty,
    tenant_not_empty_message,
)
from auth.core.models import KeyRecord, Principal, Tenant, User
from auth.core.spend import SpendDelta, SpendLine, SpendTotal

T = TypeVar("T")

_FIND_KEY: Final = (
    "SELECT u.name, u.enabled, t.name AS tenant, t.rpm, t.tpm, t.burst, t.allowed_upstreams,"
    " t.budget_usd AS tenant_budget, u.budget_usd AS user_budget, t.budget_window FROM"
    " llm_sidecar_users u JOIN llm_sidecar_tenants t ON t.name = u.tenant"
    " WHERE u.key_digest = $1"
)
_GET_TENANT: Final = (
    "SELECT name, rpm, tpm, burst, allowed_upstreams, budget_usd, budget_window"
    " FROM llm_sidecar_tenants WHERE name = $1"
)
_LIST_TENANTS: Final = (
    "SELECT name, rpm, tpm, burst, allowed_upstreams, budget_usd, budget_window"
    " FROM llm_sidecar_tenants ORDER BY name"
)
_GET_USER: Final = (
    "SELECT name, tenant, enabled, created_at, budget_usd FROM llm_sidecar_users WHERE name = $1"
)
_LIST_USERS: Final = (
    "SELECT name, tenant, enabled, created_at, budget_usd FROM llm_sidecar_users ORDER BY name"
)
_LIST_TENANT_USERS: Final = (
    "SELECT name, tenant, enabled, created_at, budget_usd FROM llm_sidecar_users WHERE tenant = $1"
    " ORDER BY name"
)


def _upstreams(value: list[str] | None) -> frozenset[str] | None:
    return None if value is None else frozenset(value)


def _tenant(row: asyncpg.Record) -> Tenant:
    return Tenant(
        row["name"],
        row["rpm"],
        row["tpm"],
        row["burst"],
        _upstreams(row["allowed_upstreams"]),
        row["budget_usd"],
        row["budget_window"],
    )


def _user(row: asyncpg.Record) -> User:
    return User(row["name"], row["tenant"], row["enabled"], row["created_at"], row["budget_usd"])


class PostgresUserRepository:
    """User store in PostgreSQL; ``dsn`` is a ``postgresql://`` URL (kept private)."""

    def __init__(
        self,
        dsn: str,
        *,
        max_connections: int = 10,
        connect_timeout_seconds: float = 5.0,
        command_timeout_seconds: float = 5.0,
        backoff_first_seconds: float = BACKOFF_FIRST_SECONDS,
        backoff_max_seconds: float = BACKOFF_MAX_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect_timeout = connect_timeout_seconds
        self._pool = PostgresPool(
            dsn,
            max_connections=max_connections,
            connect_timeout_seconds=connect_timeout_seconds,
            command_timeout_seconds=command_timeout_seconds,
            backoff_first_seconds=backoff_first_seconds,
            backoff_max_seconds=backoff_max_seconds,
            clock=clock,
        )

    def __repr__(self) -> str:
        return "PostgresUserRepository(<dsn hidden>)"

    async def _run(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        pool = await self._pool.get()
        try:
            conn = await pool.acquire(timeout=self._connect_timeout)
        except UNAVAILABLE as exc:  # acquiring may open a connection: an attempt that failed
            self._pool.failed(exc)
            raise unavailable(exc) from exc
        try:
            return await fn(conn)
        except (asyncpg.UniqueViolationError, asyncpg.ForeignKeyViolationError):
            raise  # callers translate these into admin errors
        except UNAVAILABLE as exc:
            if isinstance(exc, TimeoutError):  # not answering; a dropped connection is not
                self._pool.failed(exc)
            raise unavailable(exc) from exc
        finally:
            # A connection that cannot be reset is closed by asyncpg; the answer stands.
            with contextlib.suppress(*UNAVAILABLE):
                await pool.release(conn)

    async def migrate(self) -> None:
        await self._run(migrate_schema)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.fetchval("SELECT 1"))

    async def find_key(self, key_digest: str) -> KeyRecord | None:
        row = await self._run(lambda conn: conn.fetchrow(_FIND_KEY, key_digest))
        if row is None:
            return None
        principal = Principal(
            tenant=row["tenant"],
            user=row["name"],
            rpm=row["rpm"],
            tpm=row["tpm"],
            burst=row["burst"],
            allowed_upstreams=_upstreams(row["allowed_upstreams"]),
            tenant_budget_usd=row["tenant_budget"],
            user_budget_usd=row["user_budget"],
            budget_window=row["budget_window"],
        )
        return KeyRecord(key_digest=key_digest, principal=principal, enabled=row["enabled"])

    async def create_tenant(self, tenant: Tenant) -> None:
        upstreams = None if tenant.allowed_upstreams is None else sorted(tenant.allowed_upstreams)
        sql = (
            "INSERT INTO llm_sidecar_tenants (name, rpm, tpm, burst, allowed_upstreams,"
            " budget_usd, budget_window) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        )
        try:
            await self._run(
                lambda conn: conn.execute(
                    sql,
                    tenant.name,
                    tenant.rpm,
                    tenant.tpm,
                    tenant.burst,
                    upstreams,
                    tenant.budget_usd,
                    tenant.budget_window,
                )
            )
        except asyncpg.UniqueViolationError:
            raise DuplicateName(f"tenant {tenant.name!r} already exists") from None

    async def get_tenant(self, name: str) -> Tenant | None:
        sql = _GET_TENANT
        row = await self._run(lambda conn: conn.fetchrow(sql, name))
        return None if row is None else _tenant(row)

    async def list_tenants(self) -> list[Tenant]:
        sql = _LIST_TENANTS
        rows = await self._run(lambda conn: conn.fetch(sql))
        return [_tenant(row) for row in rows]

    async def update_tenant(self, tenant: Tenant) -> None:
        upstreams = None if tenant.allowed_upstreams is None else sorted(tenant.allowed_upstreams)
        sql = (
            "UPDATE llm_sidecar_tenants SET rpm = $2, tpm = $3, burst = $4, allowed_upstreams = $5,"
            " budget_usd = $6, budget_window = $7 WHERE name = $1"
        )
        status = await self._run(
            lambda conn: conn.execute(
                sql,
                tenant.name,
                tenant.rpm,
                tenant.tpm,
                tenant.burst,
                upstreams,
                tenant.budget_usd,
                tenant.budget_window,
            )
        )
        if status == "UPDATE 0":
            raise NotFound(f"no tenant named {tenant.name!r}")

    async def delete_tenant(self, name: str, *, cascade: bool = False) -> None:
        async def delete(conn: Connection) -> None:
            async with conn.transaction():
                # Lock the tenant row so no user can join it between the count and the delete.
                found = await conn.fetchval(
                    "SELECT 1 FROM llm_sidecar_tenants WHERE name = $1 FOR UPDATE", name
                )
                if found is None:
                    raise NotFound(f"no tenant named {name!r}")
                users = await conn.fetchval(
                    "SELECT count(*) FROM llm_sidecar_users WHERE tenant = $1", name
                )
                if users and not cascade:
                    raise TenantNotEmpty(tenant_not_empty_message(name, users))
                await conn.execute("DELETE FROM llm_sidecar_users WHERE tenant = $1", name)
                await conn.execute("DELETE FROM llm_sidecar_tenants WHERE name = $1", name)

        await self._run(delete)

    async def create_user(self, user: User, key_digest: str) -> None:
        sql = (
            "INSERT INTO llm_sidecar_users"
            " (name, tenant, enabled, key_digest, created_at, budget_usd)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
        )
        try:
            await self._run(
                lambda conn: conn.execute(
                    sql,
                    user.name,
                    user.tenant,
                    user.enabled,
                    key_digest,
                    user.created_at,
                    user.budget_usd,
                )
            )
        except asyncpg.UniqueViolationError:
            raise DuplicateName(f"user {user.name!r} already exists") from None
        except asyncpg.ForeignKeyViolationError:
            raise NotFound(f"no tenant named {user.tenant!r}") from None

    async def get_user(self, name: str) -> User | None:
        row = await self._run(lambda conn: conn.fetchrow(_GET_USER, name))
        return None if row is None else _user(row)

    async def list_users(self, tenant: str | None = None) -> list[User]:
        if tenant is None:
            rows = await self._run(lambda conn: conn.fetch(_LIST_USERS))
        else:
            rows = await self._run(lambda conn: conn.fetch(_LIST_TENANT_USERS, tenant))
        return [_user(row) for row in rows]

    async def set_user_enabled(self, name: str, enabled: bool) -> None:
        sql = "UPDATE llm_sidecar_users SET enabled = $2 WHERE name = $1"
        status = await self._run(lambda conn: conn.execute(sql, name, enabled))
        if status == "UPDATE 0":
            raise NotFound(f"no user named {name!r}")

    async def set_user_budget(self, name: str, budget_usd: float | None) -> None:
        sql = "UPDATE llm_sidecar_users SET budget_usd = $2 WHERE name = $1"
        status = await self._run(lambda conn: conn.execute(sql, name, budget_usd))
        if status == "UPDATE 0":
            raise NotFound(f"no user named {name!r}")

    async def record_spend(self, deltas: Sequence[SpendDelta], today: date) -> list[SpendTotal]:
        return await self._run(lambda conn: spend_postgres.record_spend(conn, deltas, today))

    async def spend_report(self, since: date, tenant: str | None = None) -> list[SpendLine]:
        return await self._run(lambda conn: spend_postgres.spend_report(conn, since, tenant))

    async def rotate_key(self, name: str, new_key_digest: str) -> None:
        sql = "UPDATE llm_sidecar_users SET key_digest = $2, key_rotated_at = now() WHERE name = $1"
        try:
            status = await self._run(lambda conn: conn.execute(sql, name, new_key_digest))
        except asyncpg.UniqueViolationError:
            raise DuplicateName("key digest already in use") from None
        if status == "UPDATE 0":
            raise NotFound(f"no user named {name!r}")

    async def close(self) -> None:
        await self._pool.close()
