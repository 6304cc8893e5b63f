"""The spend table in PostgreSQL: batched upserts and window sums (see ``auth.core.spend``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Final

from auth.adapters.schema_postgres import Connection
from auth.core.spend import SpendDelta, SpendLine, SpendTotal, month_start

_UPSERT: Final = (
    "INSERT INTO llm_sidecar_spend AS s (day, tenant, user_name, model, cost_nanos, input_tokens,"
    " output_tokens, requests, unpriced_requests) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    " ON CONFLICT (day, tenant, user_name, model) DO UPDATE SET"
    " cost_nanos = s.cost_nanos + excluded.cost_nanos,"
    " input_tokens = s.input_tokens + excluded.input_tokens,"
    " output_tokens = s.output_tokens + excluded.output_tokens,"
    " requests = s.requests + excluded.requests,"
    " unpriced_requests = s.unpriced_requests + excluded.unpriced_requests"
)
_TOTALS: Final = (
    "SELECT tenant, user_name, sum(CASE WHEN day = $1 THEN cost_nanos ELSE 0 END)::BIGINT"
    " AS day_nanos, sum(cost_nanos)::BIGINT AS month_nanos FROM llm_sidecar_spend"
    " WHERE day >= $2 AND day <= $1 GROUP BY tenant, user_name"
)
_REPORT: Final = (
    "SELECT tenant, user_name, model, sum(cost_nanos)::BIGINT, sum(input_tokens)::BIGINT,"
    " sum(output_tokens)::BIGINT, sum(requests)::BIGINT, sum(unpriced_requests)::BIGINT"
    " FROM llm_sidecar_spend WHERE day >= $1 AND ($2::TEXT IS NULL OR tenant = $2)"
    " GROUP BY tenant, user_name, model ORDER BY tenant, user_name, model"
)


async def record_spend(
    conn: Connection, deltas: Sequence[SpendDelta], today: date
) -> list[SpendTotal]:
    async with conn.transaction():
        if deltas:
            # Sorted: concurrent sidecars lock the rows in one order, so never deadlock.
            await conn.executemany(
                _UPSERT,
                sorted(
                    (
                        d.day,
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
                ),
            )
        rows = await conn.fetch(_TOTALS, today, month_start(today))
    return [SpendTotal(row[0], row[1], row[2], row[3]) for row in rows]


async def spend_report(conn: Connection, since: date, tenant: str | None) -> list[SpendLine]:
    rows = await conn.fetch(_REPORT, since, tenant)
    return [SpendLine(*row) for row in rows]
