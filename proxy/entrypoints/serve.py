"""``llm-sidecar serve``: both listeners on uvloop until SIGTERM/SIGINT, then drain.

Shutdown, in order (see README.md, "Operating it"):

1. first SIGTERM/SIGINT: ``/readyz`` answers 503 at once; traffic is still served for
   ``PRESTOP_SECONDS`` (callers that have not noticed yet keep working);
2. the traffic listener closes (no new connection is accepted), requests on open
   connections get 503 ``draining``, and in-flight requests and streams get up to
   ``DRAIN_SECONDS`` to finish;
3. exit 0. A second signal at any point cuts this short: open connections are closed
   and the process exits 1 at once.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

from proxy.entrypoints.app import Overrides, create_app
from proxy.settings import Settings

_log = structlog.get_logger("llm_sidecar")
T = TypeVar("T")


class ShutdownSignals:
    """The first SIGTERM/SIGINT asks for a graceful stop; a second one for an immediate one."""

    def __init__(self) -> None:
        self.graceful = asyncio.Event()
        self.immediate = asyncio.Event()

    def received(self) -> None:
        (self.immediate if self.graceful.is_set() else self.graceful).set()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.received)


async def run_until_stopped(
    settings: Settings, overrides: Overrides | None = None, signals: ShutdownSignals | None = None
) -> int:
    """Serve until a stop is asked for (by SIGTERM/SIGINT when ``signals`` is not given)."""
    sidecar = create_app(settings, overrides=overrides)
    service = sidecar.service
    try:
        await sidecar.start()
    except OSError as exc:
        _log.error("listen_failed", error=exc.strerror or str(exc))
        return 1
    # Everything allocated so far (modules, settings, the app) lives until exit: moving it
    # out of the collector's reach makes each full collection walk only request garbage.
    # Only the young generations are collected first: a full pass over every module's
    # objects took ~20 ms before /readyz could answer and found nothing (measured with
    # bench/footprint.py); what start leaves in the old generation stays, frozen.
    gc.collect(1)
    gc.freeze()
    if signals is None:
        signals = ShutdownSignals()
        signals.install()
    _log.info(
        "started",
        traffic=f"{settings.host}:{settings.port}",
        ops=f"{settings.admin_host}:{settings.admin_port}",
        upstreams=sorted(settings.upstreams),
    )
    await signals.graceful.wait()
    sidecar.begin_stopping()
    _log.info(
        "stopping",
        prestop_seconds=settings.prestop_seconds,
        drain_seconds=settings.drain_seconds,
        inflight=service.inflight,
    )
    prestop = await _unless_interrupted(asyncio.sleep(settings.prestop_seconds), signals)
    graceful = prestop is not None
    if graceful:
        await sidecar.stop_accepting()  # no new connection from here on
        _log.info("draining", inflight=service.inflight)
        drain = await _unless_interrupted(sidecar.drain(settings.drain_seconds), signals)
        graceful = drain is not None
        if drain is not None and not drain.result():
            _log.warning("drain_timeout", abandoned=service.inflight)
    if not graceful:
        _log.warning("stopped_at_once", abandoned=service.inflight)
    await sidecar.close()
    _log.info("stopped")
    return 0 if graceful else 1


async def _unless_interrupted(
    step: Coroutine[Any, Any, T], signals: ShutdownSignals
) -> asyncio.Task[T] | None:
    """``step`` run to its end, or ``None`` if a second signal came first (``step`` cancelled)."""
    task = asyncio.create_task(step)
    interrupted = asyncio.create_task(signals.immediate.wait())
    await asyncio.wait((task, interrupted), return_when=asyncio.FIRST_COMPLETED)
    interrupted.cancel()
    if task.done():
        return task
    task.cancel()
    return None


def serve(settings: Settings) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux/macOS
        return asyncio.run(run_until_stopped(settings))
    return uvloop.run(run_until_stopped(settings))
