"""The attempt loop: send a request to an endpoint, and on a retryable failure to the next.

Only while nothing of the response has reached the caller (the loop ends at the head
it returns). Retried: connection refused/reset and timeouts before the head, 502/503/504,
and 429 (another endpoint first; the same one only when its hint fits the backoff cap).
A request that may have reached the upstream (written, then the connection dropped) is
re-sent only when its method is idempotent: a POST is never replayed. Never retried:
other statuses, anything after the head. Order: the upstream's other healthy
endpoints, then its ``FALLBACK`` upstream (model mapped), then the same endpoint again
for a 5xx or connection failure. Every retry waits a full-jitter backoff and spends
from the upstream's :class:`~proxy.core.retry.RetryBudget`; attempts are capped at
``max_attempts`` in all. When no retry is left, the last retryable answer (a 503, a 429)
goes back to the caller as it came.

Each turn of the loop closes its attempt and response on the way out, whatever ends it,
unless it hands them to the caller in :class:`Served`; :meth:`Dispatcher._next` only
decides where the next attempt goes and after how long.
"""

from __future__ import annotations

import asyncio
import random as _random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from proxy.core.admission import Attempt
from proxy.core.endpoints import Endpoint, EndpointPool
from proxy.core.errors import UpstreamFault
from proxy.core.exchange import Exchange
from proxy.core.headers import with_defaults, without_content_encoding
from proxy.core.ports import (
    Body,
    Caller,
    Headers,
    RequestTracer,
    UpstreamResponse,
    UpstreamTransport,
)
from proxy.core.request_body import JsonRequestBody
from proxy.core.retry import RetryBudget, backoff, retry_hint
from proxy.core.routing import Route, Router

RETRIED_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
DEFAULT_COOL_DOWN_SECONDS = 1.0
"""How long a 429 without a usable hint parks its endpoint."""
SERVED_BY_HEADER = "x-llm-sidecar-upstream"
ATTEMPTS_HEADER = "x-llm-sidecar-attempts"


@dataclass(slots=True)
class Outbound:
    """The request as every attempt sends it, but for the key and the trace headers."""

    method: str
    headers: Headers
    """The caller's headers as filtered for the upstream, plus the correlation id."""
    body: Body
    caller: Caller
    model: str | None
    content_encoding: str = ""
    document: JsonRequestBody | None = None
    """Kept until the head arrives: a fallback may map the model."""
    prompt_tokens: int = 0
    """The prompt's estimated tokens: billed for a stream its caller abandoned before the
    usage event."""


@dataclass(slots=True)
class Served:
    """The attempt whose response goes to the caller; the service closes ``attempt``."""

    response: UpstreamResponse
    attempt: Attempt
    route: Route
    extra_headers: Headers = field(default_factory=list)


@dataclass(slots=True)
class _Progress:
    route: Route
    pool: EndpointPool
    budget: RetryBudget
    outbound: Outbound
    exchange: Exchange
    tried: list[Endpoint] = field(default_factory=list)
    number: int = 0
    fell_back: bool = False


Sleep = Callable[[float], Awaitable[None]]


class Dispatcher:
    """Sends one request through its attempts; shared by every request of the app."""

    __slots__ = (
        "_budgets",
        "_max_attempts",
        "_max_backoff",
        "_pools",
        "_random",
        "_router",
        "_sleep",
        "_tracer",
        "_transport",
    )

    def __init__(
        self,
        *,
        router: Router,
        pools: Mapping[str, EndpointPool],
        budgets: Mapping[str, RetryBudget],
        transport: UpstreamTransport,
        tracer: RequestTracer,
        max_attempts: int,
        max_backoff: float,
        sleep: Sleep = asyncio.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._router = router
        self._pools = pools
        self._budgets = budgets
        self._transport = transport
        self._tracer = tracer
        self._max_attempts = max_attempts
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._random = random

    async def dispatch(self, route: Route, outbound: Outbound, exchange: Exchange) -> Served:
        """The first response worth giving the caller; raises the last fault otherwise."""
        name = route.upstream.name
        exchange.kind = route.upstream.kind
        progress = _Progress(route, self._pools[name], self._budgets[name], outbound, exchange)
        progress.budget.request()
        endpoint = progress.pool.pick()
        if endpoint is None:  # every endpoint open: the fallback, or 503 with the wait
            endpoint = self._fall_back(progress)
            if endpoint is None:
                raise progress.pool.open_error()
        while True:
            progress.number += 1
            attempt = Attempt(endpoint, progress.number)
            exchange.attempts = progress.number
            exchange.endpoint = endpoint.name
            route = progress.route
            response: UpstreamResponse | None = None
            handed = False  # True once Served owns the attempt and its response
            try:
                response = await self._send(route, endpoint, outbound, exchange)
            except UpstreamFault as fault:
                attempt.judge(True)
                attempt.close()  # nothing to hand on: closed before the next pick counts it
                outcome = fault.outcome
                _log_attempt(exchange, endpoint, outcome)
                step = None
                if not fault.sent or outbound.method in IDEMPOTENT_METHODS:
                    step = self._next(progress, endpoint, outcome)
                if step is None:
                    raise
            else:
                status = response.status
                exchange.status = status
                if status not in RETRIED_STATUSES:
                    _log_attempt(exchange, endpoint, "ok")
                    handed = True
                    return self._served(response, attempt, progress)
                outcome, hint = self._verdict(progress, attempt, response)
                _log_attempt(exchange, endpoint, outcome)
                step = self._next(progress, endpoint, outcome, hint)
                if step is None:  # no next attempt: the caller gets this answer as it came
                    handed = True
                    return self._served(response, attempt, progress)
            finally:
                if not handed:
                    attempt.close()
                    if response is not None:
                        response.close()
            exchange.retries.append((route.upstream.name, outcome))
            endpoint, wait = step
            await self._sleep(wait)

    async def _send(
        self, route: Route, endpoint: Endpoint, outbound: Outbound, exchange: Exchange
    ) -> UpstreamResponse:
        headers = list(outbound.headers)  # each attempt its own key and trace headers
        if route.upstream.default_headers:
            with_defaults(headers, route.upstream.default_headers)
        if endpoint.credential is not None:
            headers.append(endpoint.credential)
        url = endpoint.origin + route.target
        self._tracer.upstream_call(exchange, outbound.method, url, headers)
        return await self._transport.send(
            endpoint.key, outbound.method, url, headers, outbound.body
        )

    @staticmethod
    def _verdict(
        progress: _Progress, attempt: Attempt, response: UpstreamResponse
    ) -> tuple[str, float | None]:
        """Judge a retryable status (its outcome, its retry hint) before the next pick: this
        endpoint may just have opened. A 429 parks it for later requests, retried or not."""
        hint = retry_hint(response.headers)
        if response.status != 429:
            attempt.judge(True)
            return "status_5xx", hint
        attempt.judge(False)  # a 429 proves the endpoint is up
        cool = hint if hint is not None else DEFAULT_COOL_DOWN_SECONDS
        progress.pool.cool_down(attempt.endpoint, cool)
        return "status_429", hint

    def _next(
        self, progress: _Progress, failed: Endpoint, outcome: str, hint: float | None = None
    ) -> tuple[Endpoint, float] | None:
        """The next attempt's endpoint and wait, a retry spent on it; ``None`` to stop here."""
        if progress.number >= self._max_attempts:
            return None
        upstream = progress.route.upstream.name  # before a fall-back renames the route
        progress.tried.append(failed)
        wait = 0.0
        endpoint = progress.pool.pick(progress.tried) or self._fall_back(progress)
        if endpoint is None and outcome != "status_429":
            endpoint = progress.pool.pick()  # the same endpoint(s) again, if breakers allow
        elif (
            endpoint is None
            and hint is not None
            and hint <= self._max_backoff
            and failed.breaker.retry_after() == 0.0
        ):
            endpoint, wait = failed, hint  # the lone key asks for a wait we can afford
        if endpoint is None:
            return None
        if not progress.budget.try_retry():
            progress.exchange.retry_budget_exhausted = upstream
            return None
        return endpoint, max(wait, backoff(progress.number, self._max_backoff, self._random))

    def _fall_back(self, progress: _Progress) -> Endpoint | None:
        """Move the request to its upstream's fallback (once); its first endpoint, if any."""
        route = progress.route
        name = route.upstream.fallback
        if progress.fell_back or name is None:
            return None
        outbound = progress.outbound
        allowed = outbound.caller.allowed_upstreams
        if allowed is not None and name not in allowed:
            return None
        fallback = self._router.upstream(name)
        pool = self._pools[name]
        endpoint = pool.pick()
        if endpoint is None:
            return None
        models = route.upstream.fallback_models
        model = outbound.model
        mapped = models.get(model or "") or models.get("*") or model
        progress.fell_back = True
        progress.route = self._router.with_upstream(route, fallback, mapped)
        progress.pool = pool
        progress.tried = []
        document = outbound.document
        if document is not None and mapped is not None:
            document.set_model(mapped)
            if document.changed:
                outbound.body = document.for_upstream()
                if outbound.content_encoding:
                    outbound.headers = without_content_encoding(outbound.headers)
                    outbound.content_encoding = ""
        progress.exchange.upstream = name
        progress.exchange.kind = fallback.kind
        return endpoint

    @staticmethod
    def _served(response: UpstreamResponse, attempt: Attempt, progress: _Progress) -> Served:
        extra: Headers = []
        if progress.fell_back:
            extra.append((SERVED_BY_HEADER, progress.route.upstream.name))
        if progress.number > 1:
            extra.append((ATTEMPTS_HEADER, str(progress.number)))
        return Served(response, attempt, progress.route, extra)


def _log_attempt(exchange: Exchange, endpoint: Endpoint, outcome: str) -> None:
    exchange.attempt_log.append((endpoint.upstream, endpoint.name, outcome))
