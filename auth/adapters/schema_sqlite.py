"""The SQLite schema, as numbered migrations applied in order (see ADR 0011)."""

from __future__ import annotations

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
)


def user_from_row(row: tuple[Any, ...]) -> User:
    return User(
        name=row[0], tenant=row[1], enabled=bool(row[2]), created_at=datetime.fromisoformat(row[3])
    )
