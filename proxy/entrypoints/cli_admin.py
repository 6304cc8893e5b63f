"""The ``tenants`` and ``users`` command groups of ``llm-sidecar`` (see docs/reference.md).

Only the parser lives here, so ``llm-sidecar serve`` never loads the admin code: each
leaf command's ``handler(args, settings) -> exit code`` imports
:mod:`proxy.entrypoints.cli_admin_actions` when it runs. Bad values are usage errors
(exit 2) before any I/O, including limits a repository could not store.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from auth.core.models import MAX_LIMIT

if TYPE_CHECKING:
    from proxy.settings import Settings

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace, "Settings"], int]
KEEP = argparse.SUPPRESS
"""An ``update`` flag's default: left out of the namespace, so the field is kept."""


def _limit(text: str) -> int | None:
    if text.strip().lower() == "default":
        return None
    value = _whole_number(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 (or 'default')")
    if value > MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_LIMIT} (or 'default')")
    return value


def _whole_number(text: str) -> int | None:
    """``text`` as an integer: digits, or a whole number in exponent form (``1e6``)."""
    try:
        return int(text)
    except ValueError:
        pass
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return None
    if not value.is_finite() or value != value.to_integral_value():
        return None
    return int(value)


def _budget(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an amount in USD") from None
    if not 0 <= value <= 1e9:
        raise argparse.ArgumentTypeError("must be between 0 and 1e9 USD (or 'none')")
    return value


def _upstream_list(text: str) -> list[str] | None:
    if text.strip() == "*":
        return None
    return [name.strip().lower() for name in text.split(",") if name.strip()]


def _limit_flags(parser: argparse.ArgumentParser, *, default: object) -> None:
    for flag, what in (("--rpm", "requests"), ("--tpm", "tokens")):
        parser.add_argument(
            flag, type=_limit, default=default, metavar="N", help=f"{what} per minute, or 'default'"
        )
    parser.add_argument(
        "--burst", type=_limit, default=default, metavar="N", help="bucket size cap, or 'default'"
    )
    parser.add_argument(
        "--upstreams",
        type=_upstream_list,
        default=default,
        metavar="a,b",
        help="upstreams the tenant may use ('*': every upstream, the default)",
    )
    parser.add_argument(
        "--budget-usd",
        type=_budget,
        default=default,
        metavar="X",
        help="spend allowed per window in USD, or 'none' (unlimited, the default)",
    )
    parser.add_argument(
        "--budget-window",
        choices=("day", "month"),
        default=default,
        metavar="WINDOW",
        help="UTC calendar window of the tenant's and its users' budgets (default: month)",
    )


def _deferred(action: str) -> Handler:
    def handle(args: argparse.Namespace, settings: Settings) -> int:
        from proxy.entrypoints import cli_admin_actions

        return cli_admin_actions.run(action, args, settings)

    return handle


def _leaf(group: Subparsers, command: str, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=_deferred(f"{command} {name}"))
    return parser


def register(subparsers: Subparsers) -> None:
    """Add the ``tenants`` and ``users`` command groups to the ``llm-sidecar`` parser."""
    tenants = subparsers.add_parser("tenants", help="manage tenants (limits, allowed upstreams)")
    group = tenants.add_subparsers(dest="tenants_command", metavar="COMMAND", required=True)
    create = _leaf(group, "tenants", "create", "create a tenant")
    create.add_argument("name")
    _limit_flags(create, default=None)
    listing = _leaf(group, "tenants", "list", "list tenants")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    update = _leaf(group, "tenants", "update", "change a tenant's limits or upstreams")
    update.add_argument("name")
    _limit_flags(update, default=KEEP)
    delete = _leaf(group, "tenants", "delete", "delete a tenant")
    delete.add_argument("name")
    delete.add_argument(
        "--cascade", action="store_true", help="also delete its users (their keys stop working)"
    )

    users = subparsers.add_parser("users", help="manage users and their API keys")
    group = users.add_subparsers(dest="users_command", metavar="COMMAND", required=True)
    create = _leaf(group, "users", "create", "create a user and print its API key once")
    create.add_argument("name")
    create.add_argument("--tenant", required=True)
    create.add_argument(
        "--budget-usd",
        type=_budget,
        default=None,
        metavar="X",
        help="the user's own spend limit per tenant window in USD, or 'none'",
    )
    create.add_argument("--json", action="store_true", help="print a JSON object with api_key")
    update = _leaf(group, "users", "update", "change a user's budget")
    update.add_argument("name")
    update.add_argument(
        "--budget-usd",
        type=_budget,
        default=KEEP,
        metavar="X",
        help="the user's own spend limit per tenant window in USD, or 'none' (unlimited)",
    )
    listing = _leaf(group, "users", "list", "list users")
    listing.add_argument("--tenant")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    for name, text in (
        ("disable", "disable a user (its key stops working)"),
        ("enable", "enable a disabled user"),
    ):
        _leaf(group, "users", name, text).add_argument("name")
    rotate = _leaf(group, "users", "rotate", "replace a user's API key and print it once")
    rotate.add_argument("name")
    rotate.add_argument("--json", action="store_true", help="print a JSON object with api_key")
