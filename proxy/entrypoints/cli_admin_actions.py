"""What the ``tenants`` and ``users`` commands do, imported only when one of them runs.

Each action gets the repository's ``AdminService``, the parsed arguments and the
settings. :func:`run` opens the repository from ``settings.database_url`` (migrating it
if needed), runs the action on its own event loop and closes the repository again:
exit 0 on success, 2 for bad input, duplicates and unknown names, 1 when the repository
cannot be reached. A new API key is printed alone on the last line of stdout (or in the
``api_key`` field with ``--json``); lists never show keys or digests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from auth.core.admin import UNSET, AdminService
from auth.core.errors import AuthError, InvalidInput, RepositoryUnavailable
from auth.core.models import Tenant, User
from auth.repository import open_repository

if TYPE_CHECKING:
    from proxy.settings import Settings

Action = Callable[[AdminService, argparse.Namespace, "Settings"], Awaitable[None]]


def run(action: str, args: argparse.Namespace, settings: Settings) -> int:
    """Run the action named ``action`` (``tenants create``...); returns the exit code."""
    return asyncio.run(_execute(ACTIONS[action], args, settings))


def _kept(args: argparse.Namespace, name: str) -> Any:
    """An ``update`` flag's value, or ``UNSET`` when it was not given (argparse.SUPPRESS)."""
    return getattr(args, name, UNSET)


def _known_upstreams(names: list[str] | None, settings: Settings) -> list[str] | None:
    if names is not None:
        unknown = sorted(set(names) - {name.lower() for name in settings.upstreams})
        if unknown:
            known = ", ".join(sorted(settings.upstreams)) or "(none)"
            raise InvalidInput(f"unknown upstream(s) {', '.join(unknown)}; known: {known}")
    return names


async def _execute(action: Action, args: argparse.Namespace, settings: Settings) -> int:
    try:
        repo = open_repository(settings.database_url)
    except InvalidInput as exc:
        return fail(f"LLM_SIDECAR_DATABASE_URL: {exc}", 2)
    try:
        await repo.migrate()
        await action(AdminService(repo), args, settings)
    except RepositoryUnavailable as exc:
        return fail(f"cannot reach the user repository ({exc})", 1)
    except AuthError as exc:
        return fail(str(exc), 2)
    finally:
        await repo.close()
    return 0


def fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
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
    upstreams = _kept(args, "upstreams")
    await admin.update_tenant(
        args.name,
        rpm=_kept(args, "rpm"),
        tpm=_kept(args, "tpm"),
        burst=_kept(args, "burst"),
        allowed_upstreams=upstreams if upstreams is UNSET else _known_upstreams(upstreams, s),
        budget_usd=_kept(args, "budget_usd"),
        budget_window=_kept(args, "budget_window"),
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
    table(("NAME", "RPM", "TPM", "BURST", "UPSTREAMS", "BUDGET_USD"), rows)


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
    table(("NAME", "TENANT", "STATUS", "CREATED"), rows)


async def _users_update(admin: AdminService, args: argparse.Namespace, _: Settings) -> None:
    budget = _kept(args, "budget_usd")
    if budget is not UNSET:
        await admin.set_user_budget(args.name, budget)
    else:
        await admin.get_user(args.name)  # an unknown name is still an error
    print(f"updated user {args.name!r}")


async def _users_disable(admin: AdminService, args: argparse.Namespace, _: Settings) -> None:
    await admin.disable_user(args.name)
    print(f"disabled user {args.name!r} (takes effect within the auth cache TTL)")


async def _users_enable(admin: AdminService, args: argparse.Namespace, _: Settings) -> None:
    await admin.enable_user(args.name)
    print(f"enabled user {args.name!r}")


ACTIONS: Mapping[str, Action] = {
    "tenants create": _tenants_create,
    "tenants list": _tenants_list,
    "tenants update": _tenants_update,
    "tenants delete": _tenants_delete,
    "users create": _users_create,
    "users list": _users_list,
    "users update": _users_update,
    "users disable": _users_disable,
    "users enable": _users_enable,
    "users rotate": _users_rotate,
}
