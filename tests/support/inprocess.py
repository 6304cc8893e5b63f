"""Serve ``create_app`` in this process on real sockets, with fakes where a test needs them.

Two ways. :func:`serve_in_process` runs the sidecar in the test's own event loop.
:class:`ThreadedSidecar` runs it on its own uvloop in a background thread, configured by
the same ``LLM_SIDECAR_*`` variables a ``SidecarProcess`` gets, so sync SDK clients can
call it and an e2e test that needs no real process (no signal, exit code, RSS or second
process) gets the same sidecar without paying for an interpreter start and CLI runs.
Its log is the JSON lines the process would have printed (the same redaction), and like
a subprocess's it goes to the secrets scan with a last ``/metrics`` and its spans.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import structlog
import uvloop
from prometheus_client import generate_latest

from auth.adapters.repo_memory import InMemoryUserRepository
from auth.core.admin import AdminService
from auth.core.ports import UserRepository
from auth.repository import open_repository
from proxy.adapters.logging_structlog import redact_secrets
from proxy.adapters.tracing_otel_setup import tracing_from_env
from proxy.core.ports import RequestTracer
from proxy.entrypoints.app import Overrides, create_app
from proxy.entrypoints.server import Sidecar
from proxy.settings import Settings, load_settings
from tests.support import leak_scan

T = TypeVar("T")


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


def settings_from(env: Mapping[str, str]) -> Settings:
    """``load_settings`` (typo check included) over exactly ``env``, as a subprocess given
    only these ``LLM_SIDECAR_*`` variables would read them."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("LLM_SIDECAR_"):
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return load_settings()


def _span_sink_tracer() -> RequestTracer:
    """What ``SidecarProcess`` sets up: spans to the session's sink for the secrets scan."""
    sink = leak_scan.LEDGER.span_sink_url
    if sink is None:
        return tracing_from_env({"OTEL_TRACES_EXPORTER": "none"})
    return tracing_from_env(
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
    )


@dataclass(eq=False)
class ThreadedSidecar:
    """One sidecar on its own loop and thread; ``env`` as for ``SidecarProcess``.

    Users are made with :meth:`create_user` (the CLI's ``tenants create``/``users create``
    through ``AdminService`` on its own connection to the same database) once started.
    """

    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    sidecar: Sidecar | None = None
    _admin: AdminService | None = None
    _admin_repository: UserRepository | None = None
    _tracer: RequestTracer | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _lines: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.sidecar is not None, "not started"
        return self.sidecar.traffic_url

    @property
    def admin_url(self) -> str:
        assert self.sidecar is not None, "not started"
        return self.sidecar.ops_url

    @property
    def admin(self) -> AdminService:
        """Tenants and users, as ``llm-sidecar tenants``/``users`` would manage them."""
        assert self._admin is not None, "not started"
        return self._admin

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])

    @property
    def admin_port(self) -> int:
        return int(self.admin_url.rpartition(":")[2])

    def environment(self) -> dict[str, str]:
        return {
            "LLM_SIDECAR_DATABASE_URL": f"sqlite:///{self.workdir / 'users.db'}",
            "LLM_SIDECAR_DRAIN_SECONDS": "5",
            **self.env,
        }

    def start(self) -> ThreadedSidecar:
        self.workdir.mkdir(parents=True, exist_ok=True)
        settings = settings_from(self.environment())
        ready = threading.Event()

        def main() -> None:
            self._loop = uvloop.new_event_loop()
            _LOG.add(threading.get_ident(), self._lines)
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name="in-process-sidecar", daemon=True)
        self._thread.start()
        ready.wait(10)
        try:
            self.run(self._open(settings))
        except BaseException:
            self._end_thread()
            raise
        return self

    async def _open(self, settings: Settings) -> None:
        self._tracer = _span_sink_tracer()
        self.sidecar = create_app(settings, overrides=Overrides(tracer=self._tracer))
        await self.sidecar.start(host="127.0.0.1", port=0, admin_host="127.0.0.1", admin_port=0)
        self._admin_repository = open_repository(settings.database_url)
        self._admin = AdminService(self._admin_repository)

    def run(self, step: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``step`` on the sidecar's loop (from any other thread) and return its result."""
        assert self._loop is not None, "not started"
        return asyncio.run_coroutine_threadsafe(step, self._loop).result(timeout)

    def create_user(
        self,
        tenant: str,
        user: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        burst: int | None = None,
        upstreams: Iterable[str] | None = None,
    ) -> str:
        """Create the tenant (if new) and a user; return the user's new key."""
        admin = self.admin

        async def create() -> str:
            if tenant not in {t.name for t in await admin.list_tenants()}:
                await admin.create_tenant(
                    tenant, rpm=rpm, tpm=tpm, burst=burst, allowed_upstreams=upstreams
                )
            return (await admin.create_user(user, tenant=tenant))[1]

        key = self.run(create())
        leak_scan.add_secret(key)
        return key

    def logs(self) -> str:
        """What the sidecar logged so far, one JSON object a line (as ``SidecarProcess``)."""
        return b"".join(line + b"\n" for line in list(self._lines)).decode()

    def stop(self) -> bool:
        """What SIGTERM does (stop accepting, drain, close); True if every request ended
        within ``DRAIN_SECONDS`` (the process's exit code 0)."""
        if self._loop is None or self.sidecar is None:
            return True
        try:
            return self.run(self._close(self.sidecar))
        finally:
            self._end_thread()
            leak_scan.add_output(f"log of in-process sidecar {self.url}", self.logs().encode())

    async def _close(self, sidecar: Sidecar) -> bool:
        leak_scan.add_output(f"metrics of sidecar {self.url}", generate_latest(sidecar.registry))
        sidecar.begin_stopping()
        await sidecar.stop_accepting()
        drained = await sidecar.drain(sidecar.settings.drain_seconds)
        await sidecar.close()
        if self._admin_repository is not None:
            await self._admin_repository.close()
        shutdown = getattr(self._tracer, "shutdown", None)
        if shutdown is not None:  # a tracer passed in is its owner's to flush
            await asyncio.to_thread(shutdown)
        return drained

    def _end_thread(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        _LOG.remove(thread.ident)
        loop.close()
        self._loop = None


class _ThreadLog:
    """structlog set up as ``configure_logging`` does (JSON, redacted, info and up) while
    threaded sidecars run, each line kept by the sidecar whose thread wrote it."""

    def __init__(self) -> None:
        self._sinks: dict[int, list[bytes]] = {}
        self._saved: dict[str, Any] | None = None
        self._bridge = _StandardRecords(self._sinks)

    def add(self, thread: int, sink: list[bytes]) -> None:
        if not self._sinks:
            self._saved = structlog.get_config()
            structlog.configure(
                processors=[
                    structlog.contextvars.merge_contextvars,
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info,
                    redact_secrets,
                    structlog.processors.JSONRenderer(serializer=orjson.dumps),
                ],
                wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
                logger_factory=lambda *_: self,
                cache_logger_on_first_use=False,
            )
            logging.getLogger().addHandler(self._bridge)
        self._sinks[thread] = sink

    def remove(self, thread: int | None) -> None:
        if thread is not None:
            self._sinks.pop(thread, None)
        if not self._sinks and self._saved is not None:
            logging.getLogger().removeHandler(self._bridge)
            structlog.configure(**self._saved)
            self._saved = None

    def msg(self, line: bytes) -> None:
        sink = self._sinks.get(threading.get_ident())
        if sink is not None:
            sink.append(line)
        else:  # the test's own thread: where structlog's default would print it
            print(line.decode(), file=sys.stdout)

    log = debug = info = warning = error = critical = exception = msg


class _StandardRecords(logging.Handler):
    """Warnings and errors that libraries log through ``logging`` on a sidecar's thread
    (aiohttp, asyncio) become lines of its log, as ``configure_logging`` bridges them."""

    def __init__(self, sinks: Mapping[int, list[bytes]]) -> None:
        super().__init__(logging.WARNING)
        self._sinks = sinks

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread in self._sinks:
            structlog.get_logger(record.name).log(
                record.levelno, record.getMessage(), logger=record.name, exc_info=record.exc_info
            )


_LOG = _ThreadLog()
