"""The ``tenants`` and ``users`` command groups of ``llm-sidecar`` (see docs/reference.md).

Each leaf command sets ``handler(args, settings) -> exit code``; the handler runs
its own event loop, opens the repository from ``settings.database_url`` (migrating
it if needed) and closes it again. Exit 0 on success, 2 for bad input, duplicates
and unknown names, 1 when the repository cannot be reached. A new API key is
printed alone on the last line of stdout (or in the ``api_key`` field with
``--json``); lists never show keys or digests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from auth.core.admin import UNSET, AdminService
from auth.core.errors import AuthError, InvalidInput, RepositoryUnavailable
from auth.core.models import Tenant, User
from auth.repository import open_repository

if TYPE_CHECKING:
    from proxy.settings import Settings

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Action = Callable[[AdminService, argparse.Namespace, "Settings"], Awaitable[None]]
Handler = Callable[[argparse.Namespace, "Settings"], int]


def _limit(text: str) -> int | None:
    if text.lower() == "default":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 (or 'default')")
    return value


def _budget(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount in USD") from None
    if not 0 <= value <= 1e9:
        raise argparse.ArgumentTypeError("must be between 0 and 1e9 USD (or 'none')")
    return value


def _upstream_list(text: str) -> list[str] | None:
    if text.strip() == "*":
        return None
    return [name.strip().lower() for name in text.split(",") if name.strip()]


def _known_upstreams(names: list[str] | None, settings: Settings) -> list[str] | None:
    if names is not None:
        unknown = sorted(set(names) - {name.lower() for name in settings.upstreams})
        if unknown:
            known = ", ".join(sorted(settings.upstreams)) or "(none)"
            raise InvalidInput(f"unknown upstream(s) {', '.join(unknown)}; known: {known}")
    return names


def _handler(action: Action) -> Handler:
    def handle(args: argparse.Namespace, settings: Settings) -> int:
        return asyncio.run(_execute(action, args, settings))

    return handle


async def _execute(action: Action, args: argparse.Namespace, settings: Settings) -> int:
    try:
        repo = open_repository(settings.database_url)
    except InvalidInput as exc:
        return _fail(f"LLM_SIDECAR_DATABASE_URL: {exc}", 2)
    try:
        await repo.migrate()
        await action(AdminService(repo), args, settings)
    except RepositoryUnavailable as exc:
        return _fail(f"cannot reach the user repository ({exc})", 1)
    except AuthError as exc:
        return _fail(str(exc), 2)
    finally:
        await repo.close()
    return 0


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _tenant_json(tenant: Tenant) -> dict[str, Any]:
    upstreams = tenant.allowed_upstreams
    return {
        "name": tenant.name,
        "rpm": tenant.rpm,
        "tpm": tenant.tpm,
        "burst": tenant.burst,
        "allowed_upstreams": None if upstreams is None else sorted(upstreams),
        "budget_usd": tenant.budget_usd,
        "budget_window": tenant.budget_window,
    }


def _user_json(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "tenant": user.tenant,
        "enabled": user.enabled,
        "created_at": user.created_at.isoformat(),
        "budget_usd": user.budget_usd,
    }


async def _tenants_create(admin: AdminService, args: argparse.Namespace, s: Settings) -> None:
    await admin.create_tenant(
        args.name,
        rpm=args.rpm,
        tpm=args.tpm,
        burst=args.burst,
        allowed_upstreams=_known_upstreams(args.upstreams, s),
        budget_usd=args.budget_usd,
        budget_window=args.budget_window or "month",
    )
    print(f"created tenant {args.name!r}")


async def _tenants_update(admin: AdminService, args: argparse.Namespace, s: Settings) -> None:
    upstreams = args.upstreams if args.upstreams is UNSET else _known_upstreams(args.upstreams, s)
    await admin.update_tenant(
        args.name,
        rpm=args.rpm,
        tpm=args.tpm,
        burst=args.burst,
        allowed_upstreams=upstreams,
        budget_usd=args.budget_usd,
        budget_window=args.budget_window,
    )
    print(f"updated tenant {args.name!r}")


async def _tenants_delete(admin: AdminService, args: argparse.Namespace, _: Settings) -> None:
    await admin.delete_tenant(args.name, cascade=args.cascade)
    print(f"deleted tenant {args.name!r}")


async def _tenants_list(admin: AdminService, args: argparse.Namespace, s: Settings) -> None:
    tenants = await admin.list_tenants()
    if args.json:
        print(json.dumps([_tenant_json(tenant) for tenant in tenants]))
        return

    def limit(value: int | None, default: int | None) -> str:
        if value is not None:
            return str(value)
        return "-" if default is None else f"{default} (default)"

    rows = [
        (
            t.name,
            limit(t.rpm, s.default_rpm),
            limit(t.tpm, s.default_tpm),
            limit(t.burst, None),
            "*" if t.allowed_upstreams is None else ",".join(sorted(t.allowed_upstreams)) or "-",
            "-" if t.budget_usd is None else f"{t.budget_usd:g}/{t.budget_window}",
        )
        for t in tenants
    ]
    _table(("NAME", "RPM", "TPM", "BURST", "UPSTREAMS", "BUDGET_USD"), rows)


def _print_key(args: argparse.Namespace, user: str, tenant: str, key: str, note: str) -> None:
    if args.json:
        print(json.dumps({"user": user, "tenant": tenant, "api_key": key}))
    else:
        print(note)
        print(key)


async def _users_create(admin: AdminService, args: argparse.Namespace, _: Settings) -> None:
    user, key = await admin.create_user(args.name, tenant=args.tenant, budget_usd=args.budget_usd)
    note = f"created user {user.name!r} in tenant {user.tenant!r}; its API key (shown only once):"
    _print_key(args, user.name, user.tenant, key, note)


async def _users_rotate(admin: AdminService, args: argparse.Namespace, _: Settings) -> None:
    key = await admin.rotate_key(args.name)
    note = (
        f"rotated the key of user {args.name!r}; the old key stops working within the auth "
        "cache TTL. New API key (shown only once):"
    )
    user = await admin.get_user(args.name)
    _print_key(args, user.name, user.tenant, key, note)


async def _users_list(admin: AdminService, args: argparse.Namespace, _: Settings) -> None:
    users = await admin.list_users(args.tenant)
    if args.json:
        print(json.dumps([_user_json(user) for user in users]))
        return
    rows = [
        (
            u.name,
            u.tenant,
            "enabled" if u.enabled else "disabled",
            u.created_at.strftime("%Y-%m-%d %H:%M UTC"),
        )
        for u in users
    ]
    _table(("NAME", "TENANT", "STATUS", "CREATED"), rows)


async def _users_update(admin: AdminService, args: argparse.Namespace, _: Settings) -> None:
    if args.budget_usd is not UNSET:
        await admin.set_user_budget(args.name, args.budget_usd)
    else:
        await admin.get_user(args.name)  # an unknown name is still an error
    print(f"updated user {args.name!r}")


async def _users_disable(admin: AdminService, args: argparse.Namespace, _: Settings) -> None:
    await admin.disable_user(args.name)
    print(f"disabled user {args.name!r} (takes effect within the auth cache TTL)")


async def _users_enable(admin: AdminService, args: argparse.Namespace, _: Settings) -> None:
    await admin.enable_user(args.name)
    print(f"enabled user {args.name!r}")


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


def _leaf(group: Subparsers, name: str, action: Action, help_text: str) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=_handler(action))
    return parser


def register(subparsers: Subparsers) -> None:
    """Add the ``tenants`` and ``users`` command groups to the ``llm-sidecar`` parser."""
    tenants = subparsers.add_parser("tenants", help="manage tenants (limits, allowed upstreams)")
    group = tenants.add_subparsers(dest="tenants_command", metavar="COMMAND", required=True)
    create = _leaf(group, "create", _tenants_create, "create a tenant")
    create.add_argument("name")
    _limit_flags(create, default=None)
    listing = _leaf(group, "list", _tenants_list, "list tenants")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    update = _leaf(group, "update", _tenants_update, "change a tenant's limits or upstreams")
    update.add_argument("name")
    _limit_flags(update, default=UNSET)
    delete = _leaf(group, "delete", _tenants_delete, "delete a tenant")
    delete.add_argument("name")
    delete.add_argument(
        "--cascade", action="store_true", help="also delete its users (their keys stop working)"
    )

    users = subparsers.add_parser("users", help="manage users and their API keys")
    group = users.add_subparsers(dest="users_command", metavar="COMMAND", required=True)
    create = _leaf(group, "create", _users_create, "create a user and print its API key once")
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
    update = _leaf(group, "update", _users_update, "change a user's budget")
    update.add_argument("name")
    update.add_argument(
        "--budget-usd",
        type=_budget,
        default=UNSET,
        metavar="X",
        help="the user's own spend limit per tenant window in USD, or 'none' (unlimited)",
    )
    listing = _leaf(group, "list", _users_list, "list users")
    listing.add_argument("--tenant")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    for name, action, text in (
        ("disable", _users_disable, "disable a user (its key stops working)"),
        ("enable", _users_enable, "enable a disabled user"),
    ):
        _leaf(group, name, action, text).add_argument("name")
    rotate = _leaf(group, "rotate", _users_rotate, "replace a user's API key and print it once")
    rotate.add_argument("name")
    rotate.add_argument("--json", action="store_true", help="print a JSON object with api_key")
