"""SqliteUserRepository: the embedded default store, stdlib sqlite3 on one worker thread.

All database work runs on a single dedicated thread that owns the connection, so
the event loop never blocks and the connection is never shared between threads.
The file and its parent directory are created, and the schema migrated, on first
use. Writes use ``BEGIN IMMEDIATE`` so a CLI process and a sidecar can share the
file (WAL mode, busy timeout).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any, Final, TypeVar

from auth.adapters import spend_sqlite
from auth.adapters.schema_sqlite import migrate_schema, user_from_row, write_transaction
from auth.core.errors import (
    DuplicateName,
    NotFound,
    RepositoryUnavailable,
    TenantNotEmpty,
    tenant_not_empty_message,
)
from auth.core.models import KeyRecord, Principal, Tenant, User
from auth.core.spend import SpendDelta, SpendLine, SpendTotal

T = TypeVar("T")

_FIND_KEY: Final = (
    "SELECT u.name, u.enabled, t.name, t.rpm, t.tpm, t.burst, t.allowed_upstreams,"
    " t.budget_usd, u.budget_usd, t.budget_window FROM"
    " llm_sidecar_users u JOIN llm_sidecar_tenants t ON t.name = u.tenant"
    " WHERE u.key_digest = ?"
)

_GET_TENANT: Final = (
    "SELECT name, rpm, tpm, burst, allowed_upstreams, budget_usd, budget_window"
    " FROM llm_sidecar_tenants WHERE name = ?"
)
_LIST_TENANTS: Final = (
    "SELECT name, rpm, tpm, burst, allowed_upstreams, budget_usd, budget_window"
    " FROM llm_sidecar_tenants ORDER BY name"
)
_GET_USER: Final = (
    "SELECT name, tenant, enabled, created_at, budget_usd FROM llm_sidecar_users WHERE name = ?"
)
_LIST_USERS: Final = (
    "SELECT name, tenant, enabled, created_at, budget_usd FROM llm_sidecar_users ORDER BY name"
)
_LIST_TENANT_USERS: Final = (
    "SELECT name, tenant, enabled, created_at, budget_usd FROM llm_sidecar_users WHERE tenant = ?"
    " ORDER BY name"
)


def _encode_upstreams(upstreams: frozenset[str] | None) -> str | None:
    return None if upstreams is None else json.dumps(sorted(upstreams))


def _decode_upstreams(value: str | None) -> frozenset[str] | None:
    return None if value is None else frozenset(json.loads(value))


def _tenant(row: tuple[Any, ...]) -> Tenant:
    return Tenant(row[0], row[1], row[2], row[3], _decode_upstreams(row[4]), row[5], row[6])


class SqliteUserRepository:
    """User store in one SQLite file; ``path`` may be ``":memory:"`` for throwaway use."""

    def __init__(self, path: str | Path, *, busy_timeout_seconds: float = 5.0) -> None:
        self._path = str(path)
        self._busy_timeout = busy_timeout_seconds
        self._conn: sqlite3.Connection | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="auth-sqlite")

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._worker, self._with_connection, fn)
        except sqlite3.Error as exc:
            raise RepositoryUnavailable(f"SQLite user store failed: {type(exc).__name__}") from exc
        except OSError as exc:
            raise RepositoryUnavailable(f"SQLite user store unreachable: {exc.strerror}") from exc
        except RuntimeError as exc:  # executor shut down
            raise RepositoryUnavailable("SQLite user store is closed") from exc

    def _with_connection(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = self._connect()
        return fn(self._conn)

    def _connect(self) -> sqlite3.Connection:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._enable_wal(conn)
            conn.execute("PRAGMA foreign_keys=ON")
            migrate_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL needs an exclusive lock, and SQLite answers "locked"
        # at once, without its busy handler, while another process does the same: retry.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # on the repository's own worker thread, not the loop

    async def migrate(self) -> None:
        await self._run(migrate_schema)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def find_key(self, key_digest: str) -> KeyRecord | None:
        row = await self._run(lambda conn: conn.execute(_FIND_KEY, (key_digest,)).fetchone())
        if row is None:
            return None
        principal = Principal(
            tenant=row[2],
            user=row[0],
            rpm=row[3],
            tpm=row[4],
            burst=row[5],
            allowed_upstreams=_decode_upstreams(row[6]),
            tenant_budget_usd=row[7],
            user_budget_usd=row[8],
            budget_window=row[9],
        )
        return KeyRecord(key_digest=key_digest, principal=principal, enabled=bool(row[1]))

    async def create_tenant(self, tenant: Tenant) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                if _exists(conn, "tenant", tenant.name):
                    raise DuplicateName(f"tenant {tenant.name!r} already exists")
                conn.execute(
                    "INSERT INTO llm_sidecar_tenants (name, rpm, tpm, burst, allowed_upstreams,"
                    " budget_usd, budget_window) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    _tenant_params(tenant),
                )

        await self._run(insert)

    async def get_tenant(self, name: str) -> Tenant | None:
        sql = _GET_TENANT
        row = await self._run(lambda conn: conn.execute(sql, (name,)).fetchone())
        return None if row is None else _tenant(row)

    async def list_tenants(self) -> list[Tenant]:
        sql = _LIST_TENANTS
        rows = await self._run(lambda conn: conn.execute(sql).fetchall())
        return [_tenant(row) for row in rows]

    async def update_tenant(self, tenant: Tenant) -> None:
        sql = (
            "UPDATE llm_sidecar_tenants SET rpm = ?, tpm = ?, burst = ?, allowed_upstreams = ?,"
            " budget_usd = ?, budget_window = ? WHERE name = ?"
        )
        params = (*_tenant_params(tenant)[1:], tenant.name)
        count = await self._run(lambda conn: conn.execute(sql, params).rowcount)
        if count == 0:
            raise NotFound(f"no tenant named {tenant.name!r}")

    async def delete_tenant(self, name: str, *, cascade: bool = False) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                if not _exists(conn, "tenant", name):
                    raise NotFound(f"no tenant named {name!r}")
                (users,) = conn.execute(
                    "SELECT count(*) FROM llm_sidecar_users WHERE tenant = ?", (name,)
                ).fetchone()
                if users and not cascade:
                    raise TenantNotEmpty(tenant_not_empty_message(name, users))
                conn.execute("DELETE FROM llm_sidecar_users WHERE tenant = ?", (name,))
                conn.execute("DELETE FROM llm_sidecar_tenants WHERE name = ?", (name,))

        await self._run(delete)

    async def create_user(self, user: User, key_digest: str) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                if not _exists(conn, "tenant", user.tenant):
                    raise NotFound(f"no tenant named {user.tenant!r}")
                if _exists(conn, "user", user.name):
                    raise DuplicateName(f"user {user.name!r} already exists")
                conn.execute(
                    "INSERT INTO llm_sidecar_users"
                    " (name, tenant, enabled, key_digest, created_at, budget_usd)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        user.name,
                        user.tenant,
                        user.enabled,
                        key_digest,
                        user.created_at.isoformat(),
                        user.budget_usd,
                    ),
                )

        await self._run(insert)

    async def get_user(self, name: str) -> User | None:
        params = (name,)
        row = await self._run(lambda conn: conn.execute(_GET_USER, params).fetchone())
        return None if row is None else user_from_row(row)

    async def list_users(self, tenant: str | None = None) -> list[User]:
        if tenant is None:
            rows = await self._run(lambda conn: conn.execute(_LIST_USERS).fetchall())
        else:
            params = (tenant,)
            rows = await self._run(lambda conn: conn.execute(_LIST_TENANT_USERS, params).fetchall())
        return [user_from_row(row) for row in rows]

    async def set_user_enabled(self, name: str, enabled: bool) -> None:
        sql = "UPDATE llm_sidecar_users SET enabled = ? WHERE name = ?"
        count = await self._run(lambda conn: conn.execute(sql, (enabled, name)).rowcount)
        if count == 0:
            raise NotFound(f"no user named {name!r}")

    async def set_user_budget(self, name: str, budget_usd: float | None) -> None:
        sql = "UPDATE llm_sidecar_users SET budget_usd = ? WHERE name = ?"
        count = await self._run(lambda conn: conn.execute(sql, (budget_usd, name)).rowcount)
        if count == 0:
            raise NotFound(f"no user named {name!r}")

    async def record_spend(self, deltas: Sequence[SpendDelta], today: date) -> list[SpendTotal]:
        return await self._run(lambda conn: spend_sqlite.record_spend(conn, deltas, today))

    async def spend_report(self, since: date, tenant: str | None = None) -> list[SpendLine]:
        return await self._run(lambda conn: spend_sqlite.spend_report(conn, since, tenant))

    async def rotate_key(self, name: str, new_key_digest: str) -> None:
        sql = (
            "UPDATE llm_sidecar_users SET key_digest = ?, key_rotated_at = CURRENT_TIMESTAMP"
            " WHERE name = ?"
        )
        count = await self._run(lambda conn: conn.execute(sql, (new_key_digest, name)).rowcount)
        if count == 0:
            raise NotFound(f"no user named {name!r}")

    async def close(self) -> None:
        def close(conn: sqlite3.Connection) -> None:
            conn.close()

        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._worker, close, conn)
        self._worker.shutdown(wait=False)


def _tenant_params(tenant: Tenant) -> tuple[object, ...]:
    upstreams = _encode_upstreams(tenant.allowed_upstreams)
    return (
        tenant.name,
        tenant.rpm,
        tenant.tpm,
        tenant.burst,
        upstreams,
        tenant.budget_usd,
        tenant.budget_window,
    )


_EXISTS: Final = {
    "tenant": "SELECT 1 FROM llm_sidecar_tenants WHERE name = ?",
    "user": "SELECT 1 FROM llm_sidecar_users WHERE name = ?",
}


def _exists(conn: sqlite3.Connection, kind: str, name: str) -> bool:
    return conn.execute(_EXISTS[kind], (name,)).fetchone() is not None
