"""The spend table in SQLite: batched upserts and window sums (see ``auth.core.spend``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import date
from typing import Final

from auth.adapters.schema_sqlite import write_transaction
from auth.core.spend import SpendDelta, SpendLine, SpendTotal, month_start

_UPSERT: Final = (
    "INSERT INTO llm_sidecar_spend (day, tenant, user_name, model, cost_nanos, input_tokens,"
    " output_tokens, requests, unpriced_requests) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (day, tenant, user_name, model) DO UPDATE SET"
    " cost_nanos = cost_nanos + excluded.cost_nanos,"
    " input_tokens = input_tokens + excluded.input_tokens,"
    " output_tokens = output_tokens + excluded.output_tokens,"
    " requests = requests + excluded.requests,"
    " unpriced_requests = unpriced_requests + excluded.unpriced_requests"
)
_TOTALS: Final = (
    "SELECT tenant, user_name, sum(CASE WHEN day = ? THEN cost_nanos ELSE 0 END),"
    " sum(cost_nanos) FROM llm_sidecar_spend WHERE day >= ? AND day <= ?"
    " GROUP BY tenant, user_name"
)
_REPORT: Final = (
    "SELECT tenant, user_name, model, sum(cost_nanos), sum(input_tokens), sum(output_tokens),"
    " sum(requests), sum(unpriced_requests) FROM llm_sidecar_spend"
    " WHERE day >= ? AND (? IS NULL OR tenant = ?)"
    " GROUP BY tenant, user_name, model ORDER BY tenant, user_name, model"
)


def record_spend(
    conn: sqlite3.Connection, deltas: Sequence[SpendDelta], today: date
) -> list[SpendTotal]:
    with write_transaction(conn):
        conn.executemany(
            _UPSERT,
            [
                (
                    d.day.isoformat(),
                    d.tenant,
                    d.user,
                    d.model,
                    d.cost_nanos,
                    d.input_tokens,
                    d.output_tokens,
                    d.requests,
                    d.unpriced_requests,
                )
                for d in deltas
            ],
        )
        day = today.isoformat()
        rows = conn.execute(_TOTALS, (day, month_start(today).isoformat(), day)).fetchall()
    return [SpendTotal(row[0], row[1], row[2], row[3]) for row in rows]


def spend_report(conn: sqlite3.Connection, since: date, tenant: str | None) -> list[SpendLine]:
    rows = conn.execute(_REPORT, (since.isoformat(), tenant, tenant)).fetchall()
    return [SpendLine(*row) for row in rows]
