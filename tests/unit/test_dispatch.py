"""The attempt loop against in-memory fakes: what is retried, where, and what is not."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest

from proxy.core.breaker import BreakerState, CircuitBreaker
from proxy.core.dispatch import ATTEMPTS_HEADER, SERVED_BY_HEADER, Dispatcher, Outbound
from proxy.core.endpoints import Endpoint, EndpointPool
from proxy.core.errors import BadGateway, GatewayTimeout
from proxy.core.exchange import Exchange
from proxy.core.ports import Headers, NoTracer
from proxy.core.request_body import read_json_object
from proxy.core.retry import RetryBudget
from proxy.core.routing import Route, Router, Upstream
from tests.support.fakes import FakeCaller, FakeClock, FakeResponse, FakeTransport, Script

CHAT = orjson.dumps({"model": "gpt", "messages": []})


@dataclass
class Rig:
    dispatcher: Dispatcher
    transport: FakeTransport
    pools: dict[str, EndpointPool]
    router: Router
    slept: list[float]


def _rig(
    scripts: dict[str, Script],
    *,
    endpoints: int = 2,
    max_attempts: int = 3,
    fallback: bool = False,
    ratio: float = 0.2,
) -> Rig:
    clock = FakeClock()
    upstreams = {
        "up": Upstream(
            "up", "http://up0", "http://up0/v1", "alt" if fallback else None, {"*": "alt-model"}
        ),
        "alt": Upstream("alt", "http://alt", "http://alt/v1"),
    }
    pools = {
        "up": EndpointPool(
            "up",
            [
                Endpoint(
                    "up",
                    str(i),
                    f"up/{i}",
                    f"http://up{i}",
                    f"Bearer k{i}",
                    1,
                    CircuitBreaker(f"up/{i}", failure_threshold=5, clock=clock),
                )
                for i in range(endpoints)
            ],
            clock,
        ),
        "alt": EndpointPool(
            "alt",
            [
                Endpoint(
                    "alt",
                    "0",
                    "alt",
                    "http://alt",
                    "Bearer a",
                    1,
                    CircuitBreaker("alt", clock=clock),
                )
            ],
            clock,
        ),
    }
    router = Router(upstreams, "up")
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    transport = FakeTransport(scripts)
    dispatcher = Dispatcher(
        router=router,
        pools=pools,
        budgets={name: RetryBudget(ratio, clock) for name in pools},
        transport=transport,
        tracer=NoTracer(),
        max_attempts=max_attempts,
        max_backoff=2.0,
        sleep=sleep,
        random=lambda: 0.5,
    )
    return Rig(dispatcher, transport, pools, router, slept)


def _outbound(method: str = "POST") -> Outbound:
    document = read_json_object(CHAT, "application/json", "", 1 << 20)
    return Outbound(method, [], CHAT, FakeCaller(), "gpt", "", document)


async def _dispatch(rig: Rig, method: str = "POST") -> tuple[FakeResponse, Exchange, Headers]:
    route = Route(rig.router.upstream("up"), "http://up0/v1/chat/completions", False)
    exchange = Exchange("cid", method, "/up/v1/chat/completions", 0.0)
    served = await rig.dispatcher.dispatch(route, _outbound(method), exchange)
    served.attempt.close()
    assert isinstance(served.response, FakeResponse)
    return served.response, exchange, served.extra_headers


def _refused() -> BadGateway:
    return BadGateway("refused", code="upstream_unreachable", sent=False, outcome="unreachable")


async def test_a_refused_endpoint_is_stepped_around() -> None:
    """Connection refused on one endpoint: the other serves, and the answer says 2 attempts."""
    rig = _rig({"up/0": [_refused()], "up/1": [FakeResponse(200)]})
    rig.pools["up"].endpoints[1].inflight = 1  # make endpoint 0 the first choice
    answer, exchange, extra = await _dispatch(rig)
    rig.pools["up"].endpoints[1].inflight = 0
    assert answer.status == 200
    assert [key for key, _, _ in rig.transport.sent] == ["up/0", "up/1"]
    assert rig.transport.sent[1][1] == "http://up1/v1/chat/completions"
    assert (ATTEMPTS_HEADER, "2") in extra
    assert exchange.attempt_log == [("up", "0", "unreachable"), ("up", "1", "ok")]
    assert exchange.retries == [("up", "unreachable")]
    assert rig.slept == [pytest.approx(0.05)]


async def test_a_rate_limited_endpoint_cools_and_the_other_serves() -> None:
    """A 429 with Retry-After parks its key; the retry and later calls go to the other."""
    rig = _rig(
        {
            "up/0": [FakeResponse(429, headers=[("retry-after", "30")]), FakeResponse(200)],
            "up/1": [FakeResponse(200)],
        }
    )
    rig.pools["up"].endpoints[1].inflight = 1
    first, _, _ = await _dispatch(rig)
    rig.pools["up"].endpoints[1].inflight = 0
    assert first.status == 200
    assert [key for key, _, _ in rig.transport.sent] == ["up/0", "up/1"]
    for _ in range(4):
        await _dispatch(rig)
    assert [key for key, _, _ in rig.transport.sent[2:]] == ["up/1"] * 4
    assert rig.pools["up"].endpoints[0].breaker.state is BreakerState.CLOSED


async def test_a_lone_key_waits_a_short_hint_but_not_a_long_one() -> None:
    """One endpoint: a 1 s hint is waited and retried; a 50 s hint goes back to the caller."""
    rig = _rig(
        {"up/0": [FakeResponse(429, headers=[("retry-after-ms", "1000")]), FakeResponse(200)]},
        endpoints=1,
    )
    answer, _, _ = await _dispatch(rig)
    assert answer.status == 200
    assert rig.slept == [1.0]
    long_wait = _rig({"up/0": [FakeResponse(429, headers=[("Retry-After", "50")])]}, endpoints=1)
    answer, exchange, _ = await _dispatch(long_wait)
    assert answer.status == 429
    assert not answer.closed  # the caller gets it as the upstream sent it
    assert long_wait.slept == []
    assert exchange.attempts == 1


@pytest.mark.parametrize("status", [400, 401, 404, 409, 500])
async def test_other_statuses_are_never_retried(status: int) -> None:
    """Other 4xx and a plain 500 go back to the caller from the first attempt."""
    rig = _rig({"up/0": [FakeResponse(status)], "up/1": [FakeResponse(200)]})
    answer, exchange, _ = await _dispatch(rig)
    assert answer.status == status
    assert len(rig.transport.sent) == 1
    assert exchange.retries == []


async def test_a_post_that_may_have_arrived_is_not_replayed() -> None:
    """A reset after the POST was written is not re-sent; the same on a GET is."""
    reset = BadGateway("reset", code="upstream_reset")
    post = _rig({"up/0": [reset], "up/1": [FakeResponse(200)]})
    with pytest.raises(BadGateway):
        await _dispatch(post)
    assert len(post.transport.sent) == 1
    get = _rig({"up/0": [BadGateway("reset", code="upstream_reset")], "up/1": [FakeResponse(200)]})
    answer, _, _ = await _dispatch(get, "GET")
    assert answer.status == 200
    assert len(get.transport.sent) == 2


async def test_every_endpoint_failing_falls_back_with_the_model_mapped() -> None:
    """Both endpoints 503: the fallback upstream answers, with its model and its name."""
    rig = _rig(
        {"up/0": [FakeResponse(503)], "up/1": [FakeResponse(503)], "alt": [FakeResponse(200)]},
        fallback=True,
    )
    answer, exchange, extra = await _dispatch(rig)
    assert answer.status == 200
    key, url, body = rig.transport.sent[-1]
    assert (key, url) == ("alt", "http://alt/v1/chat/completions")
    assert orjson.loads(body)["model"] == "alt-model"
    assert (SERVED_BY_HEADER, "alt") in extra
    assert (ATTEMPTS_HEADER, "3") in extra
    assert exchange.upstream == "alt"


async def test_attempts_stop_at_the_maximum_with_the_last_answer() -> None:
    """Three 503s against max 3 attempts: the third 503 is the caller's, unclosed."""
    rig = _rig(
        {
            "up/0": [FakeResponse(503), FakeResponse(503)],
            "up/1": [FakeResponse(503), FakeResponse(503)],
        }
    )
    answer, exchange, _ = await _dispatch(rig)
    assert answer.status == 503
    assert not answer.closed
    assert exchange.attempts == 3
    assert len(rig.slept) == 2


async def test_timeouts_before_the_head_are_retried_on_idempotent_requests_only() -> None:
    """A read timeout (request sent) is retried for GET; a connect timeout for POST too."""
    read = GatewayTimeout("slow")
    connect = GatewayTimeout("no connect", sent=False)
    rig = _rig({"up/0": [read], "up/1": [FakeResponse(200)]})
    assert (await _dispatch(rig, "GET"))[0].status == 200
    rig = _rig({"up/0": [connect], "up/1": [FakeResponse(200)]})
    assert (await _dispatch(rig, "POST"))[0].status == 200


async def test_the_budget_caps_retries_in_a_full_outage() -> None:
    """Every attempt fails: over 200 requests, retries stay within 20 % plus the floor."""
    rig = _rig({"up/0": [FakeResponse(503)], "up/1": [FakeResponse(503)]}, ratio=0.2)
    for endpoint in rig.pools["up"].endpoints:
        endpoint.breaker = CircuitBreaker(endpoint.key, failure_threshold=10_000)
    retries = exhausted = 0
    for _ in range(200):
        _, exchange, _ = await _dispatch(rig)
        retries += len(exchange.retries)
        exhausted += exchange.retry_budget_exhausted is not None
    assert retries <= 0.2 * 200 + 30
    assert exhausted > 0
    assert len(rig.transport.sent) == 200 + retries


async def test_an_error_while_choosing_the_retry_leaks_no_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever ends a turn of the loop, its attempt and response are given back: the
    endpoint has nothing in flight and the 503 is closed (not left to the garbage collector)."""
    unavailable = FakeResponse(503)
    rig = _rig({"up/0": [unavailable], "up/1": [FakeResponse(200)]})
    rig.pools["up"].endpoints[1].inflight = 1  # make endpoint 0 the first choice

    def broken(_budget: RetryBudget) -> bool:
        raise RuntimeError("the retry budget broke")

    monkeypatch.setattr(RetryBudget, "try_retry", broken)
    with pytest.raises(RuntimeError, match="budget broke"):
        await _dispatch(rig)
    assert rig.pools["up"].endpoints[0].inflight == 0
    assert unavailable.closed
