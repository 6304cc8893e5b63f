"""The composition root: the one place that builds real adapters and wires the core.

Nothing is wired at import time. Tests pass :class:`Overrides` to swap in fakes
(a fixed clock, an in-memory repository, a test tracer) without patching anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from auth.core.errors import RepositoryUnavailable
from auth.core.ports import UserRepository
from auth.core.service import AuthService
from auth.repository import open_repository
from proxy.adapters.logging_structlog import StructlogAccessLog
from proxy.adapters.metrics_prometheus import PrometheusObserver, SidecarMetrics
from proxy.adapters.observers import CompositeObserver
from proxy.adapters.tracing_otel_setup import tracing_from_env
from proxy.adapters.upstream_http11 import Http11Transport
from proxy.core.body_budget import BodyBudget
from proxy.core.breaker import BreakerState
from proxy.core.dispatch import Dispatcher
from proxy.core.lifecycle import Lifecycle
from proxy.core.limiter import InProcessRateLimiter
from proxy.core.ports import Authenticator, Clock, RateLimiter, RequestTracer, UpstreamTransport
from proxy.core.retry import RetryBudget
from proxy.core.service import ProxyService
from proxy.core.service_parts import Billing, RequestPolicy, ServicePorts
from proxy.core.spend import SpendLedger
from proxy.entrypoints.answers import make_rejection
from proxy.entrypoints.auth_bridge import RepositoryAuthenticator
from proxy.entrypoints.egress import build_egress
from proxy.entrypoints.http_proxy import make_proxy_handler
from proxy.entrypoints.ops import create_ops_app
from proxy.entrypoints.prices import load_prices
from proxy.entrypoints.server import Sidecar
from proxy.entrypoints.spend_bridge import RepositorySpendBackend, SpendErrorReporter, log_unwritten
from proxy.entrypoints.upstreams import (
    EndpointTransition,
    UpstreamTransition,
    build_endpoint_pools,
    build_router,
    transport_origins,
)
from proxy.settings import Settings

_log = structlog.get_logger("llm_sidecar")


@dataclass(frozen=True, slots=True)
class Overrides:
    """Replacements for the real adapters, for tests and the benchmark harness."""

    clock: Clock | None = None
    repository: UserRepository | None = None
    authenticator: Authenticator | None = None
    limiter: RateLimiter | None = None
    transport: UpstreamTransport | None = None
    tracer: RequestTracer | None = None
    registry: CollectorRegistry | None = None
    wall_clock: Callable[[], float] | None = None
    """UTC time for the spend windows (``time.time``)."""


def _breaker_listeners(
    observer: PrometheusObserver,
) -> tuple[UpstreamTransition, EndpointTransition]:
    def on_upstream(upstream: str, old: BreakerState, new: BreakerState) -> None:
        observer.breaker_transition(upstream, old, new)
        log = _log.warning if new is BreakerState.OPEN else _log.info
        log("circuit_breaker", upstream=upstream, old=old.value, new=new.value)

    def on_endpoint(breaker: str, old: BreakerState, new: BreakerState) -> None:
        if "/" in breaker:  # a lone endpoint's breaker is its upstream's: logged above
            upstream, _, endpoint = breaker.partition("/")
            log = _log.warning if new is BreakerState.OPEN else _log.info
            log(
                "endpoint_circuit_breaker",
                upstream=upstream,
                endpoint=endpoint,
                old=old.value,
                new=new.value,
            )

    return on_upstream, on_endpoint


def _build_limiter(settings: Settings, metrics: SidecarMetrics, clock: Clock) -> RateLimiter:
    local = InProcessRateLimiter(
        default_rpm=settings.default_rpm, default_tpm=settings.default_tpm, clock=clock
    )
    if settings.redis_url is None:
        return local
    from proxy.adapters.buckets_redis import RedisRateLimiter

    return RedisRateLimiter(
        settings.redis_url.get_secret_value(),
        default_rpm=settings.default_rpm,
        default_tpm=settings.default_tpm,
        failure_mode=settings.rate_limit_failure_mode,
        fallback=local,
        on_backend_error=metrics.rate_limiter_errors.inc,
    )


def create_app(settings: Settings, *, overrides: Overrides | None = None) -> Sidecar:
    """The sidecar, assembled and not yet started (``Sidecar.start``)."""
    over = overrides or Overrides()
    clock = over.clock or time.monotonic
    registry = over.registry or CollectorRegistry()
    metrics = SidecarMetrics(registry)
    prometheus = PrometheusObserver(metrics, clock, max_models=settings.max_model_labels)
    observer = CompositeObserver([prometheus, StructlogAccessLog(clock)])
    router = build_router(settings)
    pools = build_endpoint_pools(settings, clock, *_breaker_listeners(prometheus))
    for name in pools:
        metrics.breaker_state.labels(name).state(BreakerState.CLOSED.value)
    repository = over.repository or open_repository(settings.database_url)
    auth_service = AuthService(repository, cache_ttl_seconds=settings.auth_cache_ttl_seconds)
    spend = SpendLedger(
        RepositorySpendBackend(repository),
        flush_seconds=settings.spend_flush_seconds,
        clock=clock,
        wall_clock=over.wall_clock or time.time,
        on_error=SpendErrorReporter(metrics),
    )
    metrics.budget_used.source = spend.budget_used_ratios  # read at each scrape
    limiter = over.limiter or _build_limiter(settings, metrics, clock)
    # Tracing from the standard OTEL_* variables; a tracer passed in stays its owner's.
    tracer = over.tracer if over.tracer is not None else tracing_from_env()
    transport = over.transport or Http11Transport(
        transport_origins(pools),
        connect_timeout=settings.upstream_connect_timeout_seconds,
        read_timeout=settings.upstream_read_timeout_seconds,
        max_connections=settings.upstream_max_connections,
        pool_timeout=settings.upstream_pool_timeout_seconds,
        egress=build_egress(settings, pools, os.environ),
    )
    lifecycle = Lifecycle()  # set by the Sidecar and serve, read by the proxy and /readyz
    service = ProxyService(
        ServicePorts(
            router=router,
            authenticator=over.authenticator or RepositoryAuthenticator(auth_service, metrics),
            limiter=limiter,
            dispatcher=Dispatcher(
                router=router,
                pools=pools,
                budgets={name: RetryBudget(settings.retry_budget_ratio, clock) for name in pools},
                transport=transport,
                tracer=tracer,
                max_attempts=settings.retry_max_attempts,
                max_backoff=settings.retry_max_backoff_seconds,
            ),
            observer=observer,
            clock=clock,
        ),
        RequestPolicy(
            max_body_bytes=settings.max_body_bytes,
            max_inflight=settings.max_inflight,
            default_max_output_tokens=settings.default_max_output_tokens,
            stream_include_usage=settings.stream_include_usage,
        ),
        Billing(
            prices=load_prices(Path(settings.prices_file) if settings.prices_file else None),
            spend=spend,
        ),
        BodyBudget(settings.max_body_bytes_in_flight),
        lifecycle,
    )

    async def opening() -> None:
        try:
            await repository.migrate()
        except RepositoryUnavailable:
            # Come up anyway: /readyz says not ready, auth answers 503, and the
            # repository migrates itself on its first successful connection.
            _log.warning("repository_unavailable_at_start")
        spend.start()

    async def close_spend() -> None:
        log_unwritten(await spend.aclose())  # after the drain: every request has settled

    async def closing() -> None:
        # Every adapter is closed even when one before it fails: the stack runs each
        # callback (last pushed first) and raises what failed at the end.
        async with contextlib.AsyncExitStack() as stack:
            if over.tracer is None:  # a tracer passed in is its owner's to flush
                # Queued spans flushed (bounded) off the loop: export is blocking I/O.
                stack.push_async_callback(asyncio.to_thread, tracer.shutdown)
            stack.push_async_callback(auth_service.close)
            stack.push_async_callback(limiter.aclose)
            stack.push_async_callback(close_spend)
            stack.push_async_callback(transport.aclose)

    return Sidecar(
        settings=settings,
        service=service,
        lifecycle=lifecycle,
        registry=registry,
        ops_app=create_ops_app(lifecycle, registry, auth_service.ready),
        handler=make_proxy_handler(
            service, observer, tracer, clock, settings.client_timeout_seconds
        ),
        rejection=make_rejection(observer, clock),
        opening=opening,
        closing=closing,
    )
