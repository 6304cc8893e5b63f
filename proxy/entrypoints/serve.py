"""``llm-sidecar serve``: both listeners on uvloop until SIGTERM/SIGINT, then drain."""

from __future__ import annotations

import asyncio
import gc
import signal

import structlog
from aiohttp import web

from proxy.entrypoints.app import OPS_APP, SERVICE, Overrides, create_app
from proxy.settings import Settings

_log = structlog.get_logger("llm_sidecar")


async def run_until_stopped(
    settings: Settings, overrides: Overrides | None = None, stop: asyncio.Event | None = None
) -> int:
    """Serve until ``stop`` is set (by SIGTERM/SIGINT when not given), then drain."""
    app = create_app(settings, overrides=overrides)
    service = app[SERVICE]
    # aiohttp's own access log is off: the proxy writes its own richer line.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    ops_runner = web.AppRunner(app[OPS_APP], access_log=None, handle_signals=False)
    await runner.setup()
    await ops_runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port, backlog=2048).start()
        await web.TCPSite(ops_runner, settings.admin_host, settings.admin_port).start()
    except OSError as exc:
        _log.error("listen_failed", error=exc.strerror or str(exc))
        await runner.cleanup()
        await ops_runner.cleanup()
        return 1
    # Everything allocated so far (modules, settings, the app) lives until exit: moving it
    # out of the collector's reach makes each full collection walk only request garbage.
    gc.collect()
    gc.freeze()
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    _log.info(
        "started",
        traffic=f"{settings.host}:{settings.port}",
        ops=f"{settings.admin_host}:{settings.admin_port}",
        upstreams=sorted(settings.upstreams),
    )
    await stop.wait()
    _log.info("draining", inflight=service.inflight, drain_seconds=settings.drain_seconds)
    if not await service.drain(settings.drain_seconds):
        _log.warning("drain_timeout", abandoned=service.inflight)
    await runner.cleanup()
    await ops_runner.cleanup()
    _log.info("stopped")
    return 0


def serve(settings: Settings) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux/macOS
        return asyncio.run(run_until_stopped(settings))
    return uvloop.run(run_until_stopped(settings))
