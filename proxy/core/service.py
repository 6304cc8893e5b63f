"""The proxy use case: authenticate, charge, ask the breaker, send, stream back, observe.

The order is the contract's: cheap rejections first (draining, overload, unknown
route, bad key) so that a flood of bad traffic never reaches the body, the buckets
or the upstream. Every exit path settles the two things a request borrows: its
token reservation and, when it was admitted, its breaker permit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from proxy.core.body_budget import BodyBudget, BodyHold
from proxy.core.breaker import CircuitBreaker, CircuitOpen
from proxy.core.errors import (
    BadGateway,
    ClientDisconnected,
    GatewayTimeout,
    PermissionDenied,
    ProxyError,
    ServiceUnavailable,
)
from proxy.core.exchange import STATUS_CLIENT_CLOSED, Exchange
from proxy.core.headers import request_headers_for_upstream, without_content_encoding
from proxy.core.ports import (
    Authenticator,
    Body,
    Caller,
    Clock,
    Headers,
    InboundRequest,
    Observer,
    RateLimiter,
    RequestTracer,
    Reservation,
    ResponseSink,
    UpstreamTransport,
)
from proxy.core.relay import relay
from proxy.core.request_body import accepts_stream_usage, read_json_object
from proxy.core.routing import Route, Router, Upstream
from proxy.core.usage import estimate_request_tokens

# Upstream answers that mean "the provider is unwell" (429 and other 4xx do not).
BREAKER_FAILURE_STATUSES = frozenset({500, 502, 503, 504})
SERVED_BY_HEADER = "x-llm-sidecar-upstream"


class ProxyService:
    """Carries one request through the sidecar; shared by every request of the app."""

    __slots__ = (
        "_authenticator",
        "_body_budget",
        "_breakers",
        "_clock",
        "_default_max_output_tokens",
        "_drained",
        "_include_usage",
        "_limiter",
        "_max_body_bytes",
        "_max_inflight",
        "_observer",
        "_router",
        "_tracer",
        "_transport",
        "draining",
        "inflight",
        "started",
        "stopping",
    )

    def __init__(
        self,
        *,
        router: Router,
        authenticator: Authenticator,
        limiter: RateLimiter,
        breakers: Mapping[str, CircuitBreaker],
        transport: UpstreamTransport,
        observer: Observer,
        tracer: RequestTracer,
        clock: Clock,
        max_body_bytes: int,
        body_budget: BodyBudget,
        max_inflight: int,
        default_max_output_tokens: int,
        stream_include_usage: bool,
    ) -> None:
        self._router = router
        self._authenticator = authenticator
        self._limiter = limiter
        self._breakers = breakers
        self._transport = transport
        self._observer = observer
        self._tracer = tracer
        self._clock = clock
        self._max_body_bytes = max_body_bytes
        self._body_budget = body_budget
        self._max_inflight = max_inflight
        self._default_max_output_tokens = default_max_output_tokens
        self._include_usage = stream_include_usage
        self.started = False
        """Set once the adapters are up; ``/readyz`` answers 200 only after."""
        self.stopping = False
        """Set on SIGTERM: ``/readyz`` answers 503 while traffic is still served (pre-stop)."""
        self.draining = False
        """Set once the pre-stop window ends: new requests get 503, in-flight ones finish."""
        self.inflight = 0
        self._drained = asyncio.Event()

    async def handle(self, request: InboundRequest, sink: ResponseSink, exchange: Exchange) -> None:
        """Proxy ``request`` into ``sink``; raises ``ProxyError`` for the sidecar's own answers."""
        if self.draining:
            raise ServiceUnavailable(
                "The sidecar is shutting down.", code="draining", headers={"Retry-After": "1"}
            )
        if self.inflight >= self._max_inflight:
            raise ServiceUnavailable(
                "Too many requests in flight.", code="overloaded", headers={"Retry-After": "1"}
            )
        self.inflight += 1
        hold = self._body_budget.hold()
        try:
            await self._handle(request, sink, exchange, hold)
        finally:
            hold.release()
            self.inflight -= 1
            if self.draining and not self.inflight:
                self._drained.set()

    async def drain(self, grace_seconds: float) -> bool:
        """Refuse new requests; wait up to the grace for in-flight ones. True if all ended."""
        self.stopping = self.draining = True
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
        estimated = 0
        if document is not None:
            exchange.stream = document.payload.get("stream") is True
            if exchange.stream and self._include_usage and accepts_stream_usage(route.url):
                exchange.usage_added = document.ask_stream_usage()
            estimated = estimate_request_tokens(
                document.payload, default_max_output_tokens=self._default_max_output_tokens
            )
        exchange.model = model
        reservation = await self._limiter.admit(caller, estimated)
        try:
            route, breaker, probe, fallback_model = self._through_breaker(route, caller, model)
        except BaseException:
            reservation.refund()
            raise
        served_by: Headers = []
        if fallback_model is not None:
            served_by.append((SERVED_BY_HEADER, route.upstream.name))
            if document is not None:
                document.set_model(fallback_model)
        headers = request_headers_for_upstream(request.headers)
        if document is not None and document.changed:
            body = document.for_upstream()
            if request.content_encoding:
                headers = without_content_encoding(headers)
        document = None  # the parsed copy is not needed while the response streams
        exchange.upstream = route.upstream.name
        await self._exchange(
            request, route, headers, body, sink, exchange, reservation, breaker, probe, served_by
        )

    def _through_breaker(
        self, route: Route, caller: Caller, model: str | None
    ) -> tuple[Route, CircuitBreaker, bool, str | None]:
        """Admit through the route's breaker, or its fallback's while it is open.

        The last item is ``None`` unless the fallback serves the request; it then
        holds the model to ask the fallback for (mapped, or unchanged).
        """
        breaker = self._breakers[route.upstream.name]
        try:
            return route, breaker, breaker.acquire(), None
        except CircuitOpen:
            fallback_name = route.upstream.fallback
            allowed = caller.allowed_upstreams
            if fallback_name is None or (allowed is not None and fallback_name not in allowed):
                raise
            fallback = self._router.upstream(fallback_name)
            breaker = self._breakers[fallback.name]
            probe = breaker.acquire()
            models = route.upstream.fallback_models
            mapped = models.get(model or "") or models.get("*") or model or ""
            return self._router.with_upstream(route, fallback), breaker, probe, mapped

    async def _exchange(
        self,
        request: InboundRequest,
        route: Route,
        headers: Headers,
        body: Body,
        sink: ResponseSink,
        exchange: Exchange,
        reservation: Reservation,
        breaker: CircuitBreaker,
        probe: bool,
        served_by: Headers,
    ) -> None:
        upstream = route.upstream
        if upstream.authorization is not None:
            headers.append(("Authorization", upstream.authorization))
        headers.append(("X-Correlation-ID", exchange.correlation_id))
        self._tracer.upstream_call(exchange, request.method, route.url, headers)
        self._observer.upstream_started(exchange)
        exchange.upstream_started = True
        try:
            response = await self._transport.send(
                upstream.name, request.method, route.url, headers, body
            )
        except BaseException as exc:
            _abandon(breaker, probe, exc)
            reservation.refund()
            raise
        exchange.ttfb = self._clock() - exchange.started
        exchange.status = response.status
        self._observer.first_byte(exchange)
        failed = response.status in BREAKER_FAILURE_STATUSES
        if probe:
            # A probe's verdict is its head: a streaming probe must not hold the
            # half-open permit for the minutes its stream may last.
            _settle_breaker(breaker, True, failed=failed)
        try:
            usage = await relay(response, sink, served_by, strip_usage=exchange.usage_added)
        except ClientDisconnected:
            exchange.status = STATUS_CLIENT_CLOSED
            if not probe and failed:
                breaker.record_failure(False)  # a 5xx counts even if its caller left
            elif not probe:
                breaker.release(False)  # nothing was learnt about the upstream
            reservation.refund()
            return
        except BaseException as exc:
            # Mid-stream: the head is out, so nothing can be answered any more. A broken
            # upstream counts against it; a cancellation does not.
            if isinstance(exc, ProxyError):
                breaker.record_failure(False)
            elif not probe:
                breaker.release(False)
            reservation.refund()
            raise
        finally:
            response.close()
        if not probe:
            _settle_breaker(breaker, False, failed=failed)
        if usage is not None:
            exchange.input_tokens = usage.input_tokens
            exchange.output_tokens = usage.output_tokens
            exchange.response_model = usage.model
            exchange.response_id = usage.response_id
            reservation.settle(usage.input_tokens + usage.output_tokens)
        elif response.status >= 400:
            reservation.refund()


def _settle_breaker(breaker: CircuitBreaker, probe: bool, *, failed: bool) -> None:
    if failed:
        breaker.record_failure(probe)
    else:
        breaker.record_success(probe)


def _abandon(breaker: CircuitBreaker, probe: bool, exc: BaseException) -> None:
    """An upstream fault counts against the breaker; anything else only frees the permit.

    A full local connection pool (503) or a cancellation says nothing about the upstream.
    """
    if isinstance(exc, BadGateway | GatewayTimeout):
        breaker.record_failure(probe)
    else:
        breaker.release(probe)


def _check_allowed(caller: Caller, upstream: Upstream) -> None:
    allowed = caller.allowed_upstreams
    if allowed is not None and upstream.name not in allowed:
        raise PermissionDenied(f"Your tenant may not use the {upstream.name!r} upstream.")
