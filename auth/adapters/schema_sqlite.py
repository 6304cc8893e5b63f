"""The SQLite schema: numbered migrations applied in order, in one write transaction."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any, Final

from auth.core.models import User

MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (
        1,
        (
            """CREATE TABLE llm_sidecar_tenants (
                name TEXT PRIMARY KEY,
                rpm INTEGER,
                tpm INTEGER,
                burst INTEGER,
                allowed_upstreams TEXT,  -- JSON array; NULL means every upstream
                created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
            )""",
            """CREATE TABLE llm_sidecar_users (
                name TEXT PRIMARY KEY,
                tenant TEXT NOT NULL REFERENCES llm_sidecar_tenants (name) ON DELETE RESTRICT,
                enabled INTEGER NOT NULL DEFAULT 1,
                key_digest TEXT NOT NULL UNIQUE,  -- SHA-256 hex; the raw key is never stored
                created_at TEXT NOT NULL,
                key_rotated_at TEXT
            )""",
            "CREATE INDEX llm_sidecar_users_tenant ON llm_sidecar_users (tenant)",
        ),
    ),
    (
        2,  # spend and budgets (ADR 0100)
        (
            "ALTER TABLE llm_sidecar_tenants ADD COLUMN budget_usd REAL",
            "ALTER TABLE llm_sidecar_tenants ADD COLUMN budget_window TEXT NOT NULL"
            " DEFAULT 'month'",
            "ALTER TABLE llm_sidecar_users ADD COLUMN budget_usd REAL",
            """CREATE TABLE llm_sidecar_spend (
                day TEXT NOT NULL,  -- UTC date, YYYY-MM-DD
                tenant TEXT NOT NULL,
                user_name TEXT NOT NULL,
                model TEXT NOT NULL,
                cost_nanos INTEGER NOT NULL DEFAULT 0,  -- USD x 1e9
                input_tokens INTEGER NOT NULL DEFAULT 0,
                output_tokens INTEGER NOT NULL DEFAULT 0,
                requests INTEGER NOT NULL DEFAULT 0,
                unpriced_requests INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (day, tenant, user_name, model)
            )""",
        ),
    ),
    (3, ()),  # PostgreSQL's limits became BIGINT; SQLite's INTEGER is 64-bit already
)


def user_from_row(row: tuple[Any, ...]) -> User:
    return User(
        name=row[0],
        tenant=row[1],
        enabled=bool(row[2]),
        created_at=datetime.fromisoformat(row[3]),
        budget_usd=row[4],
    )


class write_transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on any error)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def migrate_schema(conn: sqlite3.Connection) -> None:
    with write_transaction(conn):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS llm_sidecar_schema_version"
            " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
        (current,) = conn.execute(
            "SELECT coalesce(max(version), 0) FROM llm_sidecar_schema_version"
        ).fetchone()
        for version, statements in MIGRATIONS:
            if version > current:
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO llm_sidecar_schema_version (version) VALUES (?)", (version,)
                )
