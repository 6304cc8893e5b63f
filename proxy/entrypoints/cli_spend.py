"""``llm-sidecar spend``: what each tenant, user and model spent in the current UTC window.

Reads the repository's spend table (written by every sidecar about once a second), so it
shows what the sidecars had flushed when it ran. Exit 0, 2 for bad input, 1 when the
repository cannot be reached. Only the parser is loaded with ``llm-sidecar``: the report
imports the repository code when it runs, so ``serve`` never loads it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from proxy.core.pricing import usd

if TYPE_CHECKING:
    from auth.core.spend import SpendLine
    from proxy.entrypoints.cli_admin import Subparsers
    from proxy.settings import Settings


def _line_json(line: SpendLine) -> dict[str, Any]:
    return {
        "tenant": line.tenant,
        "user": line.user,
        "model": line.model,
        "cost_usd": round(usd(line.cost_nanos), 9),
        "input_tokens": line.input_tokens,
        "output_tokens": line.output_tokens,
        "requests": line.requests,
        "unpriced_requests": line.unpriced_requests,
    }


async def _report(args: argparse.Namespace, settings: Settings) -> int:
    from auth.core.errors import AuthError, InvalidInput, RepositoryUnavailable
    from auth.repository import open_repository
    from proxy.entrypoints.cli_admin_actions import fail, table

    try:
        repo = open_repository(settings.database_url)
    except InvalidInput as exc:
        return fail(f"LLM_SIDECAR_DATABASE_URL: {exc}", 2)
    today = datetime.fromtimestamp(time.time(), UTC).date()
    since = today if args.window == "day" else today.replace(day=1)
    try:
        await repo.migrate()
        if args.tenant is not None and await repo.get_tenant(args.tenant) is None:
            return fail(f"no tenant named {args.tenant[:80]!r}", 2)
        lines = await repo.spend_report(since, args.tenant)
    except RepositoryUnavailable as exc:
        return fail(f"cannot reach the user repository ({exc})", 1)
    except AuthError as exc:
        return fail(str(exc), 2)
    finally:
        await repo.close()
    total = sum(line.cost_nanos for line in lines)
    if args.json:
        document = {
            "window": args.window,
            "since": since.isoformat(),
            "total_cost_usd": round(usd(total), 9),
            "lines": [_line_json(line) for line in lines],
        }
        print(json.dumps(document))
        return 0
    print(f"spend since {since.isoformat()} 00:00 UTC ({args.window}): ${usd(total):.6f}")
    rows = [
        (
            line.tenant,
            line.user,
            line.model,
            f"{usd(line.cost_nanos):.6f}" + ("+?" if line.unpriced_requests else ""),
            str(line.input_tokens),
            str(line.output_tokens),
            str(line.requests),
        )
        for line in lines
    ]
    table(("TENANT", "USER", "MODEL", "COST_USD", "INPUT", "OUTPUT", "REQUESTS"), rows)
    return 0


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_report(args, settings))


def register(subparsers: Subparsers) -> None:
    """Add the ``spend`` command to the ``llm-sidecar`` parser."""
    text = "spend, tokens and requests of the current UTC window per tenant, user and model"
    parser = subparsers.add_parser("spend", help=text, description=text)
    parser.add_argument("--tenant", help="only this tenant")
    parser.add_argument(
        "--window", choices=("day", "month"), default="month", metavar="WINDOW", help="day or month"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.set_defaults(handler=_handle)
