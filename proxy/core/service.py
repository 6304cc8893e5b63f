"""The proxy use case: authenticate, charge, dispatch through the attempts, stream back.

The order is the contract's: cheap rejections first (draining, overload, unknown
route, bad key) so that a flood of bad traffic never reaches the body, the buckets
or the upstream. What a request borrows is returned by structure: the token
reservation by its :class:`~proxy.core.admission.Admission`, each endpoint's breaker
permit by its :class:`~proxy.core.admission.Attempt` (``proxy.core.dispatch``).
"""

from __future__ import annotations

import asyncio

from proxy.core import correlation
from proxy.core.admission import Admission
from proxy.core.body_budget import BodyBudget, BodyHold
from proxy.core.dispatch import Outbound
from proxy.core.errors import (
    BUDGET_REMAINING_HEADER,
    ClientDisconnected,
    PermissionDenied,
    ProxyError,
    ServiceUnavailable,
    UpstreamFault,
    format_usd,
)
from proxy.core.exchange import STATUS_CLIENT_CLOSED, Exchange
from proxy.core.headers import request_headers_for_upstream, without_content_encoding
from proxy.core.lifecycle import Lifecycle
from proxy.core.ports import Caller, InboundRequest, ResponseSink
from proxy.core.pricing import usd
from proxy.core.relay import relay
from proxy.core.request_body import accepts_stream_usage, read_json_object
from proxy.core.routing import Route, Upstream
from proxy.core.service_parts import Billing, RequestPolicy, ServicePorts
from proxy.core.usage import Usage, estimate_tokens

# Upstream answers that mean "the provider is unwell" (429 and other 4xx do not).
BREAKER_FAILURE_STATUSES = frozenset({500, 502, 503, 504})


class ProxyService:
    """Carries one request through the sidecar; shared by every request of the app."""

    __slots__ = (
        "_authenticator",
        "_body_budget",
        "_clock",
        "_default_max_output_tokens",
        "_dispatcher",
        "_drained",
        "_include_usage",
        "_limiter",
        "_max_body_bytes",
        "_max_inflight",
        "_observer",
        "_prices",
        "_router",
        "_spend",
        "inflight",
        "lifecycle",
    )

    def __init__(
        self,
        ports: ServicePorts,
        policy: RequestPolicy,
        billing: Billing,
        body_budget: BodyBudget,
        lifecycle: Lifecycle,
    ) -> None:
        # Copied into the service's own slots: the request path reads one attribute, not two.
        self._router = ports.router
        self._authenticator = ports.authenticator
        self._limiter = ports.limiter
        self._dispatcher = ports.dispatcher
        self._observer = ports.observer
        self._clock = ports.clock
        self._max_body_bytes = policy.max_body_bytes
        self._max_inflight = policy.max_inflight
        self._default_max_output_tokens = policy.default_max_output_tokens
        self._include_usage = policy.stream_include_usage
        self._prices = billing.prices
        self._spend = billing.spend
        self._body_budget = body_budget
        self.lifecycle = lifecycle  # the Sidecar's: /readyz reads the same flags
        self.inflight = 0
        self._drained = asyncio.Event()

    async def handle(self, request: InboundRequest, sink: ResponseSink, exchange: Exchange) -> None:
        """Proxy ``request`` into ``sink``; raises ``ProxyError`` for the sidecar's own answers."""
        if self.lifecycle.draining:
            exchange.status = ServiceUnavailable.status
            raise ServiceUnavailable(
                "The sidecar is shutting down.", code="draining", headers={"Retry-After": "1"}
            )
        if self.inflight >= self._max_inflight:
            exchange.status = ServiceUnavailable.status
            raise ServiceUnavailable(
                "Too many requests in flight.", code="overloaded", headers={"Retry-After": "1"}
            )
        self.inflight += 1
        hold = self._body_budget.hold()
        try:
            await self._handle(request, sink, exchange, hold)
        except ProxyError as error:
            exchange.record_error(error)
            raise
        finally:
            hold.release()
            self.inflight -= 1
            if self.lifecycle.draining and not self.inflight:
                self._drained.set()

    async def drain(self, grace_seconds: float) -> bool:
        """Refuse new requests; wait up to the grace for in-flight ones. True if all ended."""
        self.lifecycle.stopping = self.lifecycle.draining = True
        if not self.inflight:
            return True
        try:
            await asyncio.wait_for(self._drained.wait(), grace_seconds)
        except TimeoutError:
            return False
        return True

    async def _handle(
        self, request: InboundRequest, sink: ResponseSink, exchange: Exchange, hold: BodyHold
    ) -> None:
        route = self._router.by_prefix(request.path)
        if route is not None:
            exchange.upstream = route.upstream.name
        caller = await self._authenticator.authenticate(request.authorization)
        exchange.tenant = caller.tenant
        exchange.user = caller.user
        if route is not None:
            _check_allowed(caller, route.upstream)
        body = await request.read_body(self._max_body_bytes, hold)
        document = read_json_object(
            body, request.content_type, request.content_encoding, self._max_body_bytes
        )
        model = document.payload.get("model") if document is not None else None
        if not isinstance(model, str):
            model = None
        if route is None:
            route, bare_model = self._router.by_model(request.path, model)
            _check_allowed(caller, route.upstream)
            if bare_model is not None and document is not None:
                document.set_model(model := bare_model)
        prompt = estimated = 0
        if document is not None:
            exchange.stream = document.payload.get("stream") is True
            usage_option = self._include_usage and route.upstream.stream_usage  # not Anthropic
            if exchange.stream and usage_option and accepts_stream_usage(route.url):
                exchange.usage_added = document.ask_stream_usage()
            prompt, estimated = estimate_tokens(
                document.payload, default_max_output_tokens=self._default_max_output_tokens
            )
        exchange.model = model
        outbound = Outbound(
            request.method,
            request_headers_for_upstream(request.headers),
            body,
            caller,
            model,
            request.content_encoding,
            document,
            prompt,
        )
        outbound.headers.append((correlation.HEADER, exchange.correlation_id))
        if document is not None and document.changed:
            outbound.body = document.for_upstream()
            if request.content_encoding:  # a changed body goes as plain JSON (ADR 0080)
                outbound.headers = without_content_encoding(outbound.headers)
                outbound.content_encoding = ""
        price = self._prices.price(route.upstream.name, model)
        spend = await self._spend.admit(caller, price.worst_case_nanos(estimated) if price else 0)
        with Admission(spend) as admission:
            admission.reserve(await self._limiter.admit(caller, estimated))
            await self._forward(route, outbound, sink, exchange, admission)

    async def _forward(
        self,
        route: Route,
        outbound: Outbound,
        sink: ResponseSink,
        exchange: Exchange,
        admission: Admission,
    ) -> None:
        exchange.upstream = route.upstream.name
        self._observer.upstream_started(exchange)
        exchange.upstream_started = True
        remaining = admission.spend.remaining_usd
        try:
            served = await self._dispatcher.dispatch(route, outbound, exchange)
        except ProxyError as error:  # the sidecar's own 502/503/504 say the budget too
            if remaining is not None:
                error.headers = {**error.headers, BUDGET_REMAINING_HEADER: format_usd(remaining)}
            raise
        outbound.document = None  # the parsed copy is not needed while the response streams
        if remaining is not None:
            served.extra_headers.append((BUDGET_REMAINING_HEADER, format_usd(remaining)))
        with served.attempt as attempt:
            response = served.response
            exchange.ttfb = self._clock() - exchange.started
            exchange.status = response.status
            self._observer.first_byte(exchange)
            failed = response.status in BREAKER_FAILURE_STATUSES
            attempt.judge_head(failed)
            try:
                usage = await relay(
                    response,
                    sink,
                    served.extra_headers,
                    strip_usage=exchange.usage_added,
                    head_only=outbound.method == "HEAD",
                )
            except ClientDisconnected as gone:
                exchange.status = STATUS_CLIENT_CLOSED
                if failed:
                    attempt.judge(True)  # a 5xx counts even if its caller left
                # The token bucket refunds a disconnect (the contract); the money the
                # upstream spent is billed: its usage, or, for a stream cut before its
                # usage event, the prompt's estimate and about a token per event sent.
                if gone.usage is not None:
                    self._settle(exchange, admission, gone.usage, caller_left=True)
                elif gone.events_relayed and response.status < 400:
                    relayed = Usage(outbound.prompt_tokens, gone.events_relayed)
                    self._settle(exchange, admission, relayed, reported=False, caller_left=True)
                return  # else both reservations are refunded, the permit released, on exit
            except UpstreamFault:
                attempt.judge(True)  # mid-stream: the head is out, nothing can be answered
                raise
            finally:
                response.close()
            attempt.judge(failed)
        if usage is not None:
            self._settle(exchange, admission, usage)
        elif response.status < 400:
            charged = admission.settle_estimate(exchange.model)
            exchange.cost_usd = usd(charged) if charged else None

    def _settle(
        self,
        exchange: Exchange,
        admission: Admission,
        usage: Usage,
        *,
        reported: bool = True,
        caller_left: bool = False,
    ) -> None:
        """The usage (the upstream's, logged; or, not ``reported``, the sidecar's count of a
        stream cut short) priced and settled on the reservations (``caller_left``: the
        token one refunded, see ``Admission.settle``)."""
        if reported:
            exchange.input_tokens = usage.input_tokens
            exchange.output_tokens = usage.output_tokens
            exchange.response_model = usage.model
            exchange.response_id = usage.response_id
        upstream = exchange.upstream or ""
        prices = self._prices
        price = prices.price(upstream, exchange.model) or prices.price(upstream, usage.model)
        cost = None
        if price is not None:
            cost = price.cost_nanos(
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_input_tokens,
                usage.cache_write_tokens,
            )
            exchange.cost_usd = usd(cost)
        else:
            exchange.unpriced = True
        admission.settle(usage, usage.model or exchange.model, cost, caller_left=caller_left)


def _check_allowed(caller: Caller, upstream: Upstream) -> None:
    allowed = caller.allowed_upstreams
    if allowed is not None and upstream.name not in allowed:
        raise PermissionDenied(f"Your tenant may not use the {upstream.name!r} upstream.")
