"""The PostgreSQL schema, as numbered migrations applied in order (see ADR 0011).

Tables carry an ``llm_sidecar_`` prefix so the sidecar can share a database with
an application without name clashes.
"""

from __future__ import annotations

from typing import Final, TypeAlias

import asyncpg

Connection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

# Any fixed 64-bit number; every sidecar takes the same advisory lock to migrate.
MIGRATION_LOCK_ID: Final = 0x6C6C6D7363_0001

MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (
        1,
        (
            """CREATE TABLE llm_sidecar_tenants (
                name TEXT PRIMARY KEY,
                rpm INTEGER,
                tpm INTEGER,
                burst INTEGER,
                allowed_upstreams TEXT[],  -- NULL means every upstream
                created_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
            """CREATE TABLE llm_sidecar_users (
                name TEXT PRIMARY KEY,
                tenant TEXT NOT NULL REFERENCES llm_sidecar_tenants (name) ON DELETE RESTRICT,
                enabled BOOLEAN NOT NULL DEFAULT TRUE,
                key_digest TEXT NOT NULL UNIQUE,  -- SHA-256 hex; the raw key is never stored
                created_at TIMESTAMPTZ NOT NULL,
                key_rotated_at TIMESTAMPTZ
            )""",
            "CREATE INDEX llm_sidecar_users_tenant ON llm_sidecar_users (tenant)",
        ),
    ),
    (
        2,  # spend and budgets (ADR 0100)
        (
            "ALTER TABLE llm_sidecar_tenants ADD COLUMN budget_usd DOUBLE PRECISION",
            "ALTER TABLE llm_sidecar_tenants ADD COLUMN budget_window TEXT NOT NULL"
            " DEFAULT 'month'",
            "ALTER TABLE llm_sidecar_users ADD COLUMN budget_usd DOUBLE PRECISION",
            """CREATE TABLE llm_sidecar_spend (
                day DATE NOT NULL,  -- UTC
                tenant TEXT NOT NULL,
                user_name TEXT NOT NULL,
                model TEXT NOT NULL,
                cost_nanos BIGINT NOT NULL DEFAULT 0,  -- USD x 1e9
                input_tokens BIGINT NOT NULL DEFAULT 0,
                output_tokens BIGINT NOT NULL DEFAULT 0,
                requests BIGINT NOT NULL DEFAULT 0,
                unpriced_requests BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (day, tenant, user_name, model)
            )""",
        ),
    ),
    (
        3,  # limits as large as SQLite's INTEGER holds: a tpm of 10**12 is a real setting
        (
            "ALTER TABLE llm_sidecar_tenants ALTER COLUMN rpm TYPE BIGINT,"
            " ALTER COLUMN tpm TYPE BIGINT, ALTER COLUMN burst TYPE BIGINT",
        ),
    ),
)


async def migrate_schema(conn: Connection) -> None:
    async with conn.transaction():
        # Serialises concurrent sidecars; released when the transaction ends.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS llm_sidecar_schema_version"
            " (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        current = await conn.fetchval(
            "SELECT coalesce(max(version), 0) FROM llm_sidecar_schema_version"
        )
        for version, statements in MIGRATIONS:
            if version > current:
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO llm_sidecar_schema_version (version) VALUES ($1)", version
                )
