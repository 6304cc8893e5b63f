"""One assembled sidecar and its two listeners, started and stopped as one.

``create_app`` builds a :class:`Sidecar`; ``llm-sidecar serve`` and the in-process tests
both ``start`` it, ``drain`` it and ``close`` it (uvicorn's ``Server`` shape), so there
is one way to assemble a running sidecar. The traffic listener is aiohttp's low-level
server with the proxy handler behind it (``edge``); the ops listener is an ordinary
``web.Application``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.core.lifecycle import Lifecycle
from proxy.core.service import ProxyService
from proxy.entrypoints.edge import ProxyHandler, Rejection, traffic_runner
from proxy.settings import Settings


@dataclass(eq=False)
class Sidecar:
    """What ``create_app`` assembled; ``start``/``stop_accepting``/``drain``/``close`` run it."""

    settings: Settings
    service: ProxyService
    lifecycle: Lifecycle
    registry: CollectorRegistry
    ops_app: web.Application
    handler: ProxyHandler
    rejection: Rejection
    opening: Callable[[], Awaitable[None]]
    """Brings the adapters up (migrates the repository); never raises for a dead one."""
    closing: Callable[[], Awaitable[None]]
    """Closes the adapters (connections, Redis, the repository, the tracer)."""
    _runners: list[web.BaseRunner] = field(default_factory=list)
    _traffic: web.TCPSite | None = None
    traffic_url: str = ""
    ops_url: str = ""

    async def start(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        admin_host: str | None = None,
        admin_port: int | None = None,
    ) -> None:
        """Bind both listeners (settings' addresses unless given; port 0: any free port).

        Raises ``OSError`` when a port cannot be bound, with nothing left running.
        """
        settings = self.settings
        await self.opening()
        traffic = traffic_runner(self.handler, self.rejection, settings)
        ops = web.AppRunner(self.ops_app, access_log=None, handle_signals=False)
        self._runners = [traffic, ops]
        await traffic.setup()
        await ops.setup()
        site = web.TCPSite(
            traffic, host or settings.host, settings.port if port is None else port, backlog=2048
        )
        ops_site = web.TCPSite(
            ops,
            admin_host or settings.admin_host,
            settings.admin_port if admin_port is None else admin_port,
        )
        try:
            await site.start()
            await ops_site.start()
        except OSError:
            await self.close()
            raise
        self._traffic = site
        self.traffic_url, self.ops_url = _url(site), _url(ops_site)
        self.lifecycle.started = True

    def begin_stopping(self) -> None:
        """A stop was asked for: ``/readyz`` answers 503 from now on, so the endpoints
        controller takes the pod out, while traffic is still served (the pre-stop)."""
        self.lifecycle.stopping = True

    async def stop_accepting(self) -> None:
        """Close the traffic listener: no new connection; open ones are still served."""
        if self._traffic is not None:
            await self._traffic.stop()

    async def drain(self, grace_seconds: float) -> bool:
        """New requests get 503; wait up to the grace for in-flight ones. True if all ended."""
        return await self.service.drain(grace_seconds)

    async def close(self) -> None:
        """Stop both listeners and close the adapters."""
        self.lifecycle.started = False
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
        await self.closing()


def _url(site: web.TCPSite) -> str:
    server = site._server  # aiohttp exposes the bound port only through the server
    sockets = getattr(server, "sockets", None)
    if not sockets:
        return site.name
    host, port = sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"
