"""What :class:`~proxy.core.service.ProxyService` is built from, in three named parts.

The composition root fills these once; the service copies their fields into its own
slots, so a request never pays an extra attribute hop for the grouping.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.core.dispatch import Dispatcher
from proxy.core.ports import Authenticator, Clock, Observer, RateLimiter
from proxy.core.pricing import PriceTable
from proxy.core.routing import Router
from proxy.core.spend import SpendLedger


@dataclass(frozen=True, slots=True)
class ServicePorts:
    """The collaborators the use case talks to for every request."""

    router: Router
    authenticator: Authenticator
    limiter: RateLimiter
    dispatcher: Dispatcher
    observer: Observer
    clock: Clock


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """The operator's limits and defaults applied to each request."""

    max_body_bytes: int
    """The largest request body accepted (413 above)."""
    max_inflight: int
    """Requests handled at once; the next one gets 503 ``overloaded``."""
    default_max_output_tokens: int
    """Output tokens reserved for a request that names no maximum."""
    stream_include_usage: bool
    """Ask OpenAI-shaped upstreams for a usage chunk on streams (stripped before the caller)."""


@dataclass(frozen=True, slots=True)
class Billing:
    """The money side: what a model costs and the ledger that holds tenants to budget."""

    prices: PriceTable
    spend: SpendLedger
