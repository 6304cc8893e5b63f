"""The core service against in-memory fakes: every exit path settles permit and reservation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest

from proxy.core.body_budget import BodyBudget
from proxy.core.breaker import BreakerState, CircuitBreaker, CircuitOpen
from proxy.core.dispatch import SERVED_BY_HEADER, Dispatcher
from proxy.core.endpoints import Endpoint, EndpointPool
from proxy.core.errors import BadGateway, PermissionDenied, ServiceUnavailable
from proxy.core.exchange import Exchange
from proxy.core.lifecycle import Lifecycle
from proxy.core.ports import NoTracer
from proxy.core.pricing import Price, PriceTable, usd
from proxy.core.retry import RetryBudget
from proxy.core.routing import Router, Upstream
from proxy.core.service import ProxyService
from proxy.core.service_parts import Billing, RequestPolicy, ServicePorts
from proxy.core.usage import estimate_tokens
from tests.support.fakes import (
    FakeAuthenticator,
    FakeCaller,
    FakeLimiter,
    FakeRequest,
    FakeResponse,
    FakeSink,
    FakeTransport,
    NullObserver,
    spend_ledger,
)

USAGE = {"model": "m", "id": "r1", "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
CHAT = orjson.dumps({"model": "llama", "messages": [{"role": "user", "content": "hi"}]})


def _service(
    transport: FakeTransport,
    caller: FakeCaller | None = None,
    *,
    max_inflight: int = 10,
    prices: PriceTable | None = None,
) -> tuple[ProxyService, FakeLimiter, dict[str, CircuitBreaker]]:
    upstreams = {
        "groq": Upstream("groq", "http://g", "http://g/openai/v1", "openai", {"llama": "gpt-mini"}),
        "openai": Upstream("openai", "http://o", "http://o/v1"),
    }
    breakers = {
        name: CircuitBreaker(name, failure_threshold=2, clock=lambda: 0.0) for name in upstreams
    }
    pools = {
        name: EndpointPool(
            name,
            [Endpoint(name, "0", name, upstream.origin, f"Bearer {name}", 1, breakers[name])],
            clock=lambda: 0.0,
        )
        for name, upstream in upstreams.items()
    }
    router = Router(upstreams, "openai")
    limiter = FakeLimiter()
    dispatcher = Dispatcher(
        router=router,
        pools=pools,
        budgets={name: RetryBudget(0.2, lambda: 0.0) for name in pools},
        transport=transport,
        tracer=NoTracer(),
        max_attempts=1,
        max_backoff=0.0,
    )
    service = ProxyService(
        ServicePorts(
            router=router,
            authenticator=FakeAuthenticator(caller or FakeCaller()),
            limiter=limiter,
            dispatcher=dispatcher,
            observer=NullObserver(),
            clock=lambda: 0.0,
        ),
        RequestPolicy(
            max_body_bytes=1 << 20,
            max_inflight=max_inflight,
            default_max_output_tokens=100,
            stream_include_usage=True,
        ),
        Billing(prices=prices or PriceTable({}), spend=spend_ledger()),
        BodyBudget(4 << 20),
        Lifecycle(),
    )
    return service, limiter, breakers


async def _run(service: ProxyService, request: FakeRequest, sink: FakeSink) -> Exchange:
    exchange = Exchange("cid", request.method, request.path, 0.0)
    await service.handle(request, sink, exchange)
    return exchange


async def test_usage_settles_the_reservation() -> None:
    """A JSON reply's usage corrects the reservation and lands on the exchange."""
    transport = FakeTransport({"groq": FakeResponse(200, orjson.dumps(USAGE))})
    service, limiter, _ = _service(transport)
    exchange = await _run(service, FakeRequest(CHAT), FakeSink())
    (reservation,) = limiter.reservations
    assert reservation.amount > 100
    assert reservation.settled == 7
    assert (exchange.input_tokens, exchange.output_tokens, exchange.status) == (3, 4, 200)


async def test_upstream_5xx_counts_against_breaker_and_refunds() -> None:
    """Two upstream 500s open a threshold-2 breaker; both reservations are refunded."""
    transport = FakeTransport({"groq": FakeResponse(500, b"{}")})
    service, limiter, breakers = _service(transport)
    for _ in range(2):
        sink = FakeSink()
        await _run(service, FakeRequest(CHAT), sink)
        assert sink.status == 500
    assert breakers["groq"].state is BreakerState.OPEN
    assert all(r.refunded for r in limiter.reservations)


async def test_upstream_429_is_not_a_breaker_failure() -> None:
    """Upstream 429s pass through and never open the breaker."""
    transport = FakeTransport({"groq": FakeResponse(429, b"{}")})
    service, _, breakers = _service(transport)
    for _ in range(5):
        await _run(service, FakeRequest(CHAT), FakeSink())
    assert breakers["groq"].state is BreakerState.CLOSED


async def test_open_breaker_falls_back_with_mapped_model() -> None:
    """While groq is open, the fallback serves with the mapped model and says so."""
    transport = FakeTransport(
        {"groq": BadGateway("down"), "openai": FakeResponse(200, orjson.dumps(USAGE))}
    )
    service, _, breakers = _service(transport)
    for _ in range(2):
        with pytest.raises(BadGateway):
            await _run(service, FakeRequest(CHAT), FakeSink())
    sink = FakeSink()
    exchange = await _run(service, FakeRequest(CHAT), sink)
    upstream, url, body = transport.sent[-1]
    assert (upstream, url) == ("openai", "http://o/v1/chat/completions")
    assert orjson.loads(body)["model"] == "gpt-mini"
    assert (SERVED_BY_HEADER, "openai") in sink.headers
    assert exchange.upstream == "openai"
    assert breakers["groq"].state is BreakerState.OPEN


async def test_open_breaker_without_fallback_is_503_and_refunds() -> None:
    """An open breaker with no fallback answers CircuitOpen before the upstream."""
    transport = FakeTransport({"openai": BadGateway("down")})
    service, limiter, _ = _service(transport)
    request = FakeRequest(CHAT, path="/openai/v1/chat/completions")
    for _ in range(2):
        with pytest.raises(BadGateway):
            await _run(service, request, FakeSink())
    with pytest.raises(CircuitOpen):
        await _run(service, request, FakeSink())
    assert len(transport.sent) == 2
    assert all(r.refunded for r in limiter.reservations)


async def test_client_gone_releases_and_refunds() -> None:
    """A caller that leaves mid-stream is logged 499, refunded, and no breaker verdict."""
    stream = b'data: {"id":"1"}\n\ndata: [DONE]\n\n'
    transport = FakeTransport({"groq": FakeResponse(200, stream, "text/event-stream")})
    service, limiter, breakers = _service(transport)
    exchange = await _run(service, FakeRequest(CHAT), FakeSink(gone=True))
    assert exchange.status == 499
    assert limiter.reservations[0].refunded
    assert breakers["groq"].state is BreakerState.CLOSED


async def test_a_stream_abandoned_before_its_usage_is_billed_what_was_sent() -> None:
    """The caller hangs up after two events, before the usage event: it is billed the
    prompt's estimate plus the two events relayed, its tokens are refunded (the contract's
    buckets refund a disconnect), and no usage is logged as if the upstream had stated it."""
    events = b"".join(
        b'data: {"id":"1","choices":[{"index":0,"delta":{"content":"w"}}]}\n\n' for _ in range(4)
    )
    transport = FakeTransport({"groq": FakeResponse(200, events, "text/event-stream")})
    price = Price(input=1.0, output=2.0, cached_input=0.5, cache_write=1.25)
    service, limiter, _ = _service(transport, prices=PriceTable({"llama": price}))
    exchange = await _run(service, FakeRequest(CHAT), FakeSink(gone_after=4))  # line by line
    prompt, _ = estimate_tokens(orjson.loads(CHAT), default_max_output_tokens=100)
    assert exchange.status == 499
    assert exchange.cost_usd == usd(price.cost_nanos(prompt, 2, 0, 0))
    assert limiter.reservations[0].refunded
    assert (exchange.input_tokens, exchange.output_tokens) == (None, None)


async def test_stream_requests_get_include_usage() -> None:
    """Streaming chat requests are sent with stream_options.include_usage on."""
    transport = FakeTransport(
        {"groq": FakeResponse(200, b"data: [DONE]\n\n", "text/event-stream", chunked=True)}
    )
    service, _, _ = _service(transport)
    body = orjson.dumps({"model": "llama", "stream": True, "messages": []})
    await _run(service, FakeRequest(body), FakeSink())
    assert orjson.loads(transport.sent[0][2])["stream_options"] == {"include_usage": True}


async def test_tenant_limited_to_upstreams_gets_403() -> None:
    """A tenant allowed only openai may not call groq, and nothing is sent."""
    transport = FakeTransport({})
    service, _, _ = _service(transport, FakeCaller(allowed_upstreams=frozenset({"openai"})))
    with pytest.raises(PermissionDenied):
        await _run(service, FakeRequest(CHAT), FakeSink())
    assert transport.sent == []


async def test_draining_and_overload_are_503() -> None:
    """A draining service and one at max in-flight both refuse with 503."""
    service, _, _ = _service(FakeTransport({}), max_inflight=1)
    service.inflight = 1
    with pytest.raises(ServiceUnavailable) as overloaded:
        await _run(service, FakeRequest(CHAT), FakeSink())
    assert overloaded.value.code == "overloaded"
    service.inflight = 0
    assert await service.drain(0.1)
    with pytest.raises(ServiceUnavailable) as draining:
        await _run(service, FakeRequest(CHAT), FakeSink())
    assert draining.value.code == "draining"


@dataclass
class BrokenStream(FakeResponse):
    """Sends one chunk, then the upstream connection breaks."""

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        yield b'data: {"id":"1"}\n\n'
        raise BadGateway("reset mid-stream")


async def test_mid_stream_reset_counts_against_the_breaker() -> None:
    """A stream broken after its head counts as a failure and refunds; it is not retried."""
    transport = FakeTransport({"groq": BrokenStream(200, b"", "text/event-stream", chunked=True)})
    service, limiter, breakers = _service(transport)
    for _ in range(2):
        with pytest.raises(BadGateway):
            await _run(service, FakeRequest(CHAT), FakeSink())
    assert len(transport.sent) == 2
    assert breakers["groq"].state is BreakerState.OPEN
    assert all(r.refunded for r in limiter.reservations)


async def test_json_labelled_as_text_is_charged_like_json() -> None:
    """A JSON body sent as text/plain reserves the same tokens as one sent as JSON."""
    reserved = []
    for content_type in ("application/json", "text/plain"):
        transport = FakeTransport({"groq": FakeResponse(200, b"{}")})
        service, limiter, _ = _service(transport)
        await _run(service, FakeRequest(CHAT, content_type=content_type), FakeSink())
        reserved.append(limiter.reservations[0].amount)
    assert reserved[0] == reserved[1] > 100
