"""The soak's traffic mix: weighted scenarios, each one request and the outcomes it may have.

Faults go to a second upstream name, ``flaky`` (the same fake upstream, reached with
``/flaky/v1/...``), mixed with healthy calls there so its breaker keeps opening, probing
and closing instead of staying open. The main upstream, ``openai``, only ever sees healthy
traffic, so every request on it must succeed: its breaker never has a reason to open.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import orjson

from auth.core import keys

MAIN_ROUTE = "/openai/v1/chat/completions"
FLAKY_ROUTE = "/flaky/v1/chat/completions"
STREAM_END = b"data: [DONE]"
MALFORMED_KEY = "sk-not-a-sidecar-key"

# The flaky upstream's breaker may answer any of its requests with this instead.
CIRCUIT_OPEN = "503 circuit_open"
# What the sidecar says when the upstream broke the exchange before answering (the code
# names the way it broke; the contract fixes only the status).
BAD_GATEWAY = ("502 bad_gateway", "502 upstream_reset")


@dataclass(frozen=True)
class Scenario:
    """One kind of request: where it goes, what it asks for, and the outcomes it may have."""

    name: str
    weight: int
    route: str
    model: str
    expected: frozenset[str]
    stream: bool = False
    key: str = "good"  # "good", "unknown" (well-formed, in no repository) or "malformed"
    hang_up_after_first_chunk: bool = False


def _flaky(*outcomes: str) -> frozenset[str]:
    return frozenset({*outcomes, CIRCUIT_OPEN})


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("chat", 30, MAIN_ROUTE, "fake-model", frozenset({"200"})),
    Scenario("chat stream", 30, MAIN_ROUTE, "fake-model", frozenset({"200"}), stream=True),
    Scenario("slow chat (0.5 s)", 4, MAIN_ROUTE, "slow", frozenset({"200"})),
    Scenario(
        "client hangs up mid-stream",
        6,
        MAIN_ROUTE,
        "fake-model",
        frozenset({"client hung up"}),
        stream=True,
        hang_up_after_first_chunk=True,
    ),
    # A fresh well-formed key each time: every one is a repository lookup and a new
    # negative-cache entry (which the cache must bound by TTL and size).
    Scenario(
        "bad key: unknown",
        2,
        MAIN_ROUTE,
        "fake-model",
        frozenset({"401 invalid_api_key"}),
        key="unknown",
    ),
    Scenario(
        "bad key: malformed",
        1,
        MAIN_ROUTE,
        "fake-model",
        frozenset({"401 invalid_api_key"}),
        key="malformed",
    ),
    Scenario("flaky: healthy chat", 10, FLAKY_ROUTE, "fake-model", _flaky("200")),
    Scenario("flaky: healthy stream", 6, FLAKY_ROUTE, "fake-model", _flaky("200"), stream=True),
    Scenario("flaky: upstream 500", 2, FLAKY_ROUTE, "fail-500", _flaky("500 fake_500")),
    Scenario("flaky: upstream 503", 2, FLAKY_ROUTE, "fail-503", _flaky("503 fake_503")),
    Scenario("flaky: upstream 429", 2, FLAKY_ROUTE, "fail-429", _flaky("429 fake_429")),
    Scenario("flaky: reset", 1, FLAKY_ROUTE, "reset", _flaky(*BAD_GATEWAY)),
    Scenario("flaky: garbage", 1, FLAKY_ROUTE, "garbage", _flaky(*BAD_GATEWAY)),
    Scenario(
        "flaky: reset mid-stream",
        1,
        FLAKY_ROUTE,
        "reset-mid-stream",
        # The status line and first chunk were already relayed: the stream is just cut.
        _flaky("200 cut short"),
        stream=True,
    ),
    Scenario("flaky: slow", 1, FLAKY_ROUTE, "slow", _flaky("200")),
    # Never answers: the sidecar's read timeout (1.5 s) gives up on it.
    Scenario("flaky: upstream hangs", 1, FLAKY_ROUTE, "hang", _flaky("504 upstream_timeout")),
)


def picker(scenarios: Sequence[Scenario], rng: random.Random) -> Callable[[], Scenario]:
    """A function that draws scenarios by weight."""
    weights = [s.weight for s in scenarios]
    return lambda: rng.choices(scenarios, weights)[0]


def _authorization(scenario: Scenario, good_keys: Sequence[str], rng: random.Random) -> str:
    if scenario.key == "unknown":
        return f"Bearer {keys.generate()}"
    if scenario.key == "malformed":
        return f"Bearer {MALFORMED_KEY}"
    return f"Bearer {rng.choice(good_keys)}"


def _error_code(body: bytes) -> str:
    try:
        code = orjson.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "(not an OpenAI error body)"
    return str(code)


async def run_once(
    session: aiohttp.ClientSession,
    base_url: str,
    scenario: Scenario,
    good_keys: Sequence[str],
    rng: random.Random,
) -> str:
    """Send one request of the scenario; name its outcome (``"200"``, ``"502 bad_gateway"``...)."""
    payload = {
        "model": scenario.model,
        "messages": [{"role": "user", "content": "soak"}],
        "max_tokens": 16,
        "stream": scenario.stream,
    }
    headers = {"Authorization": _authorization(scenario, good_keys, rng)}
    try:
        async with session.post(
            base_url + scenario.route, data=orjson.dumps(payload), headers=headers
        ) as response:
            if response.status != 200:
                return f"{response.status} {_error_code(await response.read())}"
            if scenario.hang_up_after_first_chunk:
                await response.content.readany()
                response.close()  # drops the connection with the stream half read
                return "client hung up"
            body = await response.read()
            if scenario.stream and STREAM_END not in body:
                return "200 cut short"
            return "200"
    except aiohttp.ClientPayloadError:
        return "200 cut short"  # the sidecar closed a relayed stream when the upstream broke
    except (TimeoutError, aiohttp.ClientError) as exc:
        return f"client error: {type(exc).__name__}"
