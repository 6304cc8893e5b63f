"""Upstreams from settings: the router, each upstream's endpoints with their breakers.

Part of the composition root. A lone endpoint's breaker and transport pool carry the
upstream's name (as before there were several); several carry ``upstream/endpoint``.
The upstream's breaker metric follows the state of the whole pool (open only when every
endpoint is), so dashboards keep one series per upstream.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.core.breaker import BreakerState, CircuitBreaker
from proxy.core.endpoints import Endpoint, EndpointPool
from proxy.core.ports import Clock
from proxy.core.providers import AZURE_API_VERSION, PROVIDERS
from proxy.core.routing import API_VERSION_PARAMETER, DEPLOYMENTS_PATH, Router, Upstream
from proxy.settings import Settings

UpstreamTransition = Callable[[str, BreakerState, BreakerState], None]
"""``(upstream, old, new)``: the pool's state changed."""
EndpointTransition = Callable[[str, BreakerState, BreakerState], None]
"""``(breaker name, old, new)``: one endpoint's breaker changed."""


def build_router(settings: Settings) -> Router:
    upstreams = {}
    for name, spec in settings.upstreams.items():
        origin = spec.resolved_endpoints()[0].base_url
        provider = PROVIDERS[spec.kind]
        # An Azure upstream's API lives under /openai unless OPENAI_PATH says otherwise.
        api_path = spec.openai_path if "openai_path" in spec.model_fields_set else provider.api_path
        upstreams[name] = Upstream(
            name=name,
            origin=origin,
            openai_prefix=origin + api_path,
            fallback=spec.fallback,
            fallback_models=dict(spec.fallback_models),
            kind=spec.kind,
            default_headers=provider.default_headers,
            stream_usage=provider.stream_usage,
            deployment_prefix=origin + DEPLOYMENTS_PATH if provider.deployments else None,
            api_query=f"{API_VERSION_PARAMETER}={spec.api_version or AZURE_API_VERSION}",
        )
    return Router(upstreams, settings.default_upstream)


def build_endpoint_pools(
    settings: Settings,
    clock: Clock,
    on_upstream: UpstreamTransition,
    on_endpoint: EndpointTransition,
) -> dict[str, EndpointPool]:
    """One pool per upstream; breakers report to ``on_endpoint``, pools to ``on_upstream``."""
    pools: dict[str, EndpointPool] = {}
    for name, spec in settings.upstreams.items():
        specs = spec.resolved_endpoints()
        changed = _PoolWatch(name, pools, on_upstream, on_endpoint)
        endpoints = []
        for endpoint in specs:
            key = name if len(specs) == 1 else f"{name}/{endpoint.name}"
            secret = endpoint.api_key.get_secret_value() if endpoint.api_key else None
            endpoints.append(
                Endpoint(
                    upstream=name,
                    name=endpoint.name or "0",
                    key=key,
                    origin=endpoint.base_url,
                    credential=PROVIDERS[spec.kind].credential(secret) if secret else None,
                    weight=endpoint.weight,
                    breaker=CircuitBreaker(
                        key,
                        failure_threshold=settings.breaker_failure_threshold,
                        cooldown_seconds=settings.breaker_cooldown_seconds,
                        clock=clock,
                        on_transition=changed,
                    ),
                )
            )
        pools[name] = EndpointPool(name, endpoints, clock)
    return pools


class _PoolWatch:
    """An endpoint breaker's transition hook that also reports its pool's state changes."""

    __slots__ = ("_last", "_name", "_on_endpoint", "_on_upstream", "_pools")

    def __init__(
        self,
        name: str,
        pools: dict[str, EndpointPool],
        on_upstream: UpstreamTransition,
        on_endpoint: EndpointTransition,
    ) -> None:
        self._name = name
        self._pools = pools
        self._on_upstream = on_upstream
        self._on_endpoint = on_endpoint
        self._last = BreakerState.CLOSED

    def __call__(self, breaker: str, old: BreakerState, new: BreakerState) -> None:
        self._on_endpoint(breaker, old, new)
        state = self._pools[self._name].state()
        if state is not self._last:
            self._on_upstream(self._name, self._last, state)
            self._last = state


def transport_origins(pools: dict[str, EndpointPool]) -> dict[str, str]:
    """The transport's pool key -> origin, one per endpoint."""
    return {e.key: e.origin for pool in pools.values() for e in pool.endpoints}
