"""Serve ``create_app`` in this event loop on real sockets, with fakes where a test needs them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from auth.adapters.repo_memory import InMemoryUserRepository
from auth.core.admin import AdminService
from proxy.entrypoints.app import Overrides, create_app
from proxy.entrypoints.server import Sidecar
from proxy.settings import Settings
from tests.support import leak_scan


@dataclass(frozen=True)
class InProcessSidecar:
    url: str
    admin_url: str
    key: str
    sidecar: Sidecar


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
    """Both listeners on ephemeral loopback ports; drained and closed on exit."""
    sidecar = create_app(settings, overrides=overrides)
    await sidecar.start(host="127.0.0.1", port=0, admin_host="127.0.0.1", admin_port=0)
    try:
        yield InProcessSidecar(sidecar.traffic_url, sidecar.ops_url, key, sidecar)
    finally:
        await sidecar.drain(5.0)
        await sidecar.close()
