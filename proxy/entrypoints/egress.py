"""How each transport pool leaves the pod: directly or through a forward proxy (ADR 0090).

Part of the composition root: decided once, at start, from the settings (``PROXY_URL``
of an endpoint or its upstream, ``CA_FILE``) and the standard ``HTTPS_PROXY`` /
``HTTP_PROXY`` / ``NO_PROXY`` variables; the transport never decides per request.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from proxy.core.endpoints import EndpointPool
from proxy.core.forward_proxy import Egress, egress_for
from proxy.settings import Settings

_log = structlog.get_logger("llm_sidecar")


def build_egress(
    settings: Settings, pools: Mapping[str, EndpointPool], environ: Mapping[str, str]
) -> dict[str, Egress]:
    """The transport's pool key -> its ``Egress``, one per endpoint; logs each proxied one."""
    routes: dict[str, Egress] = {}
    for pool in pools.values():
        spec = settings.upstreams[pool.upstream]
        specs = {endpoint.name: endpoint for endpoint in spec.resolved_endpoints()}
        for endpoint in pool.endpoints:
            chosen = specs[endpoint.name].proxy_url or spec.proxy_url
            egress = egress_for(
                endpoint.origin,
                chosen.get_secret_value() if chosen is not None else None,
                environ,
                spec.ca_file,
            )
            routes[endpoint.key] = egress
            if egress.proxy is not None:  # where, never who: no credentials in the line
                _log.info(
                    "egress_proxy",
                    pool=endpoint.key,
                    proxy=f"{egress.proxy.host}:{egress.proxy.port}",
                    tunnel=endpoint.origin.startswith("https:"),
                )
    return routes
