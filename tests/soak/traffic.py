"""The soak's traffic mix: weighted scenarios, each one request and the outcomes it may have.

Faults go to a second upstream name, ``flaky`` (the same fake upstream, reached with
``/flaky/v1/...``), mixed with healthy calls there so its breaker keeps opening, probing
and closing instead of staying open. The main upstream, ``openai``, only ever sees healthy
traffic, so every request on it must succeed: its breaker never has a reason to open.

An outcome is ``"200"``, ``"200 cut short"``, ``"client hung up"``, ``"client error: X"``
or ``"<status> <code>"`` with the ``code`` of the OpenAI-shaped error body; the fake
upstream's own errors have codes ``fake_<status>``, which is how a passed-through
upstream answer is told from one the sidecar made (see :func:`source`).
"""

from __future__ import annotations

import gzip
import random
import zlib
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
ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,  # HTTP "deflate" is the zlib format (RFC 9110 8.4.1.2)
}


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
    encoding: str | None = None  # request body sent with this Content-Encoding

    @property
    def compressed(self) -> bool:
        return self.encoding is not None


def _flaky(*outcomes: str) -> frozenset[str]:
    return frozenset({*outcomes, CIRCUIT_OPEN})


OK = frozenset({"200"})
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("chat", 26, MAIN_ROUTE, "fake-model", OK),
    Scenario("chat stream", 26, MAIN_ROUTE, "fake-model", OK, stream=True),
    Scenario("slow chat (0.5 s)", 4, MAIN_ROUTE, "slow", OK),
    Scenario("compressed: gzip chat", 3, MAIN_ROUTE, "fake-model", OK, encoding="gzip"),
    Scenario("compressed: deflate chat", 2, MAIN_ROUTE, "fake-model", OK, encoding="deflate"),
    Scenario(
        "compressed: gzip stream", 2, MAIN_ROUTE, "fake-model", OK, stream=True, encoding="gzip"
    ),
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
    Scenario("flaky: upstream 502", 1, FLAKY_ROUTE, "fail-502", _flaky("502 fake_502")),
    Scenario("flaky: upstream 503", 2, FLAKY_ROUTE, "fail-503", _flaky("503 fake_503")),
    Scenario("flaky: upstream 429", 2, FLAKY_ROUTE, "fail-429", _flaky("429 fake_429")),
    Scenario("flaky: reset", 1, FLAKY_ROUTE, "reset", _flaky(*BAD_GATEWAY)),
    Scenario("flaky: garbage", 1, FLAKY_ROUTE, "garbage", _flaky(*BAD_GATEWAY)),
    # A sized JSON body cut short: relayed as far as it came (cut short), or refused whole
    # with a 502 when the sidecar reads it to the end first (to learn its usage).
    Scenario(
        "flaky: reset mid-body",
        1,
        FLAKY_ROUTE,
        "reset-mid-body",
        _flaky("200 cut short", *BAD_GATEWAY),
    ),
    Scenario(
        "flaky: reset mid-stream",
        1,
        FLAKY_ROUTE,
        "reset-mid-stream",
        _flaky("200 cut short"),
        stream=True,
    ),
    Scenario("flaky: slow", 1, FLAKY_ROUTE, "slow", _flaky("200")),
    # Never answers: the sidecar's read timeout (1.5 s) gives up on it.
    Scenario("flaky: upstream hangs", 1, FLAKY_ROUTE, "hang", _flaky("504 upstream_timeout")),
)


def source(outcome: str) -> str:
    """Who produced an outcome: ``upstream`` (relayed), ``sidecar`` (its own answer), ``client``."""
    if outcome.startswith(("client", "200")):
        return "client" if outcome.startswith("client") else "upstream"
    code = outcome.partition(" ")[2]
    return "upstream" if code.startswith("fake_") else "sidecar"


def status_of(outcome: str) -> int:
    """The HTTP status of an outcome (0 when the client got none)."""
    head = outcome.partition(" ")[0]
    return int(head) if head.isdigit() else 0


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


def error_code(body: bytes) -> str:
    """The ``error.code`` of an OpenAI-shaped error body."""
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
    headers = {
        "Authorization": _authorization(scenario, good_keys, rng),
        "Content-Type": "application/json",
    }
    body = orjson.dumps(payload)
    if scenario.encoding is not None:
        body = ENCODERS[scenario.encoding](body)
        headers["Content-Encoding"] = scenario.encoding
    try:
        async with session.post(base_url + scenario.route, data=body, headers=headers) as response:
            if response.status != 200:
                return f"{response.status} {error_code(await response.read())}"
            if scenario.hang_up_after_first_chunk:
                await response.content.readany()
                response.close()  # drops the connection with the stream half read
                return "client hung up"
            answer = await response.read()
            if scenario.stream and STREAM_END not in answer:
                return "200 cut short"
            return "200"
    except aiohttp.ClientPayloadError:
        return "200 cut short"  # the sidecar closed a relayed body when the upstream broke
    except (TimeoutError, aiohttp.ClientError) as exc:
        return f"client error: {type(exc).__name__}"
