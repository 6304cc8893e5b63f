"""Serve ``create_app`` in this event loop on real sockets, with fakes where a test needs them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from auth.adapters.repo_memory import InMemoryUserRepository
from auth.core.admin import AdminService
from proxy.entrypoints.app import OPS_APP, SERVICE, Overrides, create_app
from proxy.entrypoints.edge import TrafficRunner
from proxy.settings import Settings
from tests.support import leak_scan


@dataclass(frozen=True)
class InProcessSidecar:
    url: str
    admin_url: str
    key: str
    app: web.Application


async def user_repository(
    tenant: str = "acme", user: str = "alice", **limits: int | None
) -> tuple[InMemoryUserRepository, str]:
    """An in-memory repository holding one tenant and one user; returns it and the key."""
    repository = InMemoryUserRepository()
    admin = AdminService(repository)
    await admin.create_tenant(
        tenant,
        rpm=limits.get("rpm"),
        tpm=limits.get("tpm"),
        burst=limits.get("burst"),
        allowed_upstreams=None,
    )
    _, key = await admin.create_user(user, tenant=tenant)
    leak_scan.add_secret(key)
    return repository, key


@asynccontextmanager
async def serve_in_process(
    settings: Settings, overrides: Overrides, key: str
) -> AsyncIterator[InProcessSidecar]:
    """Both listeners on ephemeral loopback ports; drained and cleaned up on exit."""
    app = create_app(settings, overrides=overrides)
    runner = TrafficRunner(app, settings)
    ops_runner = web.AppRunner(app[OPS_APP], access_log=None)
    await runner.setup()
    await ops_runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    ops_site = web.TCPSite(ops_runner, "127.0.0.1", 0)
    await site.start()
    await ops_site.start()
    try:
        yield InProcessSidecar(_url(site), _url(ops_site), key, app)
    finally:
        await app[SERVICE].drain(5.0)
        await runner.cleanup()
        await ops_runner.cleanup()


def _url(site: web.TCPSite) -> str:
    server = site._server  # aiohttp exposes the bound port only through the server
    assert server is not None
    sockets = getattr(server, "sockets", None)
    assert sockets
    host, port = sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"
