"""The ops listener: ``/healthz``, ``/readyz``, ``/metrics`` (kubelet probes, Prometheus)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from proxy.core.lifecycle import Lifecycle

ReadinessCheck = Callable[[], Awaitable[bool]]


def create_ops_app(
    lifecycle: Lifecycle, registry: CollectorRegistry, repository_ready: ReadinessCheck
) -> web.Application:
    """Routes that must answer even when the traffic listener is saturated or draining."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        if lifecycle.stopping:
            return web.json_response({"status": "draining"}, status=503)
        if not lifecycle.started:
            return web.json_response({"status": "starting"}, status=503)
        if not await repository_ready():
            return web.json_response({"status": "repository unavailable"}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(_request: web.Request) -> web.Response:
        # Rendering cost grows with the (bounded) series count; fine on the loop.
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
