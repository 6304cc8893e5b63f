"""Provider kinds through an in-process sidecar: the official anthropic SDK and AzureOpenAI.

The fake upstream answers ``claude-fake`` only at ``/v1/messages`` with ``x-api-key`` and
``anthropic-version``, and ``azure-fake`` only at its deployment path with ``api-key``
and an ``api-version``: a sidecar that sends either provider the wrong header or path
gets that provider's 401/404, and the SDK raises.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.e2e.conftest import RunningSidecar, start_in_process
from tests.support import leak_scan
from tests.support.fake_upstream import (
    ANTHROPIC_FAKE_KEY,
    ANTHROPIC_MODEL,
    ANTHROPIC_USAGE,
    AZURE_DEPLOYMENT,
    AZURE_FAKE_KEY,
    STREAM_WORDS,
    FakeUpstream,
)
from tests.support.inprocess import ThreadedSidecar
from tests.support.metrics import scrape, value

leak_scan.add_secret(ANTHROPIC_FAKE_KEY)
leak_scan.add_secret(AZURE_FAKE_KEY)

MESSAGES = [{"role": "user", "content": "Say hello."}]
API_VERSION = "2024-10-21"
PROMPT_TOKENS = (
    ANTHROPIC_USAGE["input_tokens"]
    + ANTHROPIC_USAGE["cache_read_input_tokens"]
    + ANTHROPIC_USAGE["cache_creation_input_tokens"]
)


@pytest.fixture(scope="module")
def providers(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSidecar]:
    """A sidecar whose built-in anthropic, an Azure upstream of two regions and a second
    anthropic-kind upstream all point at the fake."""
    regions = [
        {"name": "eastus", "base_url": fake_upstream.url, "api_key": AZURE_FAKE_KEY},
        {"name": "westeu", "base_url": fake_upstream.url, "api_key": AZURE_FAKE_KEY},
    ]
    process, key = start_in_process(
        tmp_path_factory.mktemp("providers"),
        fake_upstream,
        LLM_SIDECAR_UPSTREAMS__ANTHROPIC__BASE_URL=fake_upstream.url,
        LLM_SIDECAR_UPSTREAMS__ANTHROPIC__API_KEY=ANTHROPIC_FAKE_KEY,
        LLM_SIDECAR_UPSTREAMS__AZURE__KIND="azure",
        LLM_SIDECAR_UPSTREAMS__AZURE__ENDPOINTS=json.dumps(regions),
        LLM_SIDECAR_UPSTREAMS__CLAUDE__KIND="anthropic",
        LLM_SIDECAR_UPSTREAMS__CLAUDE__BASE_URL=fake_upstream.url,
        LLM_SIDECAR_UPSTREAMS__CLAUDE__API_KEY=ANTHROPIC_FAKE_KEY,
    )
    yield RunningSidecar(process, key)
    assert process.stop(), process.logs()


def _access_line(process: ThreadedSidecar, upstream: str) -> dict[str, object]:
    """The one access line of a request to ``upstream`` (written as the request ends)."""
    deadline = time.monotonic() + 5
    while True:
        found = []
        for line in process.logs().splitlines():
            if line.startswith("{") and f'"upstream":"{upstream}"' in line:
                found.append(json.loads(line))
        if found or time.monotonic() > deadline:
            (only,) = found
            return only
        time.sleep(0.05)


def test_anthropic_sdk_message(providers: RunningSidecar, upstream: FakeUpstream) -> None:
    """The sync anthropic SDK with only base_url set gets its message; x-api-key is swapped."""
    client = anthropic.Anthropic(base_url=f"{providers.url}/anthropic", api_key=providers.key)
    message = client.messages.create(model=ANTHROPIC_MODEL, max_tokens=16, messages=MESSAGES)
    client.close()
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from the fake upstream."
    assert message.usage.cache_read_input_tokens == ANTHROPIC_USAGE["cache_read_input_tokens"]
    (seen,) = upstream.received
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == ANTHROPIC_FAKE_KEY
    assert seen.headers["anthropic-version"]  # the SDK's own, passed through
    assert "authorization" not in seen.headers
    assert providers.key not in repr(seen.raw_headers)


def test_anthropic_sdk_stream_is_counted_as_the_total_prompt(
    providers: RunningSidecar, upstream: FakeUpstream
) -> None:
    """A stream's message_start and message_delta usage reach the token metrics, cache included."""
    client = anthropic.Anthropic(base_url=f"{providers.url}/claude", api_key=providers.key)
    with client.messages.stream(model=ANTHROPIC_MODEL, max_tokens=16, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    client.close()
    assert text == "".join(STREAM_WORDS)
    assert final.usage.output_tokens == ANTHROPIC_USAGE["output_tokens"]
    (seen,) = upstream.received
    assert "stream_options" not in seen.json()  # Anthropic reports usage unasked
    samples = scrape(providers.process.admin_url)
    tokens = "llm_sidecar_tokens_total"
    assert value(samples, tokens, upstream="claude", type="input") == PROMPT_TOKENS
    assert value(samples, tokens, upstream="claude", type="output") == 10
    genai = "gen_ai_client_token_usage_sum"
    assert value(samples, genai, gen_ai_provider_name="anthropic", gen_ai_token_type="input") > 0
    line = _access_line(providers.process, "claude")
    assert (line["input_tokens"], line["output_tokens"]) == (PROMPT_TOKENS, 10)


def test_anthropic_version_is_added_when_the_caller_sent_none(
    providers: RunningSidecar, upstream: FakeUpstream
) -> None:
    """A bare HTTP caller without anthropic-version reaches Anthropic: the sidecar adds it."""
    body = json.dumps({"model": ANTHROPIC_MODEL, "max_tokens": 8, "messages": MESSAGES})
    request = urllib.request.Request(  # noqa: S310 - loopback only
        f"{providers.url}/anthropic/v1/messages",
        data=body.encode(),
        headers={"x-api-key": providers.key, "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        assert response.status == 200
    assert upstream.received[0].headers["anthropic-version"] == "2023-06-01"


def test_a_caller_anthropic_version_is_kept(
    providers: RunningSidecar, upstream: FakeUpstream
) -> None:
    """The caller's own anthropic-version goes upstream alone, not beside a second one."""
    client = anthropic.Anthropic(
        base_url=f"{providers.url}/anthropic",
        api_key=providers.key,
        default_headers={"anthropic-version": "2099-01-01"},
    )
    client.messages.create(model=ANTHROPIC_MODEL, max_tokens=8, messages=MESSAGES)
    client.close()
    versions = [v for k, v in upstream.received[0].raw_headers if k.lower() == "anthropic-version"]
    assert versions == ["2099-01-01"]


def test_anthropic_caller_key_in_x_api_key(
    providers: RunningSidecar, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An anthropic client that sends its key as x-api-key is authenticated by it."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)  # no Authorization from the SDK
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    client = anthropic.Anthropic(
        base_url=f"{providers.url}/anthropic",
        api_key=None,
        auth_token=None,
        default_headers={"x-api-key": providers.key},
    )
    client.messages.create(model=ANTHROPIC_MODEL, max_tokens=8, messages=MESSAGES)
    client.close()
    (seen,) = upstream.received
    assert seen.headers["x-api-key"] == ANTHROPIC_FAKE_KEY
    assert providers.key not in repr(seen.raw_headers)


def test_azure_openai_sdk(providers: RunningSidecar, upstream: FakeUpstream) -> None:
    """AzureOpenAI aimed at the sidecar reaches the deployment, its api-key swapped."""
    client = openai.AzureOpenAI(
        azure_endpoint=f"{providers.url}/azure", api_key=providers.key, api_version=API_VERSION
    )
    completion = client.chat.completions.create(model=AZURE_DEPLOYMENT, messages=MESSAGES)
    client.close()
    assert completion.choices[0].message.content == "Hello from the fake upstream."
    (seen,) = upstream.received
    assert seen.path == (
        f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions?api-version={API_VERSION}"
    )
    assert seen.headers["api-key"] == AZURE_FAKE_KEY
    assert "authorization" not in seen.headers
    assert providers.key not in repr(seen.raw_headers)


async def test_azure_openai_stream_asks_for_usage(
    providers: RunningSidecar, upstream: FakeUpstream
) -> None:
    """An Azure stream gets include_usage (the kind takes it); the caller never sees that chunk."""
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=f"{providers.url}/azure", api_key=providers.key, api_version=API_VERSION
    )
    stream = await client.chat.completions.create(
        model=AZURE_DEPLOYMENT, messages=MESSAGES, stream=True
    )
    words = [chunk.choices[0].delta.content async for chunk in stream]
    await client.close()
    assert words == STREAM_WORDS
    assert upstream.received[0].json()["stream_options"] == {"include_usage": True}


def test_v1_routing_maps_an_azure_model_to_its_deployment(
    providers: RunningSidecar, upstream: FakeUpstream
) -> None:
    """``/v1/chat/completions`` with ``azure/<deployment>`` goes to the deployment path."""
    client = openai.OpenAI(base_url=f"{providers.url}/v1", api_key=providers.key)
    client.chat.completions.create(model=f"azure/{AZURE_DEPLOYMENT}", messages=MESSAGES)
    client.close()
    (seen,) = upstream.received
    assert seen.path == (
        f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions?api-version={API_VERSION}"
    )
    assert seen.headers["api-key"] == AZURE_FAKE_KEY


def test_v1_routing_refuses_a_model_that_is_no_deployment_name(
    providers: RunningSidecar, upstream: FakeUpstream
) -> None:
    """A model that could climb out of the deployment path gets 400 and never leaves."""
    client = openai.OpenAI(base_url=f"{providers.url}/v1", api_key=providers.key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="azure/../../admin", messages=MESSAGES)
    client.close()
    assert raised.value.code == "invalid_model"
    assert upstream.received == []


def test_anthropic_usage_charges_the_token_bucket(
    providers: RunningSidecar, upstream: FakeUpstream
) -> None:
    """At 100 tokens a call (90 prompt with cache, 10 out) a 250-token tenant gets 3 calls."""
    key = providers.process.create_user("tight", "tim", tpm=250)
    client = anthropic.Anthropic(base_url=f"{providers.url}/anthropic", api_key=key, max_retries=0)
    for _ in range(3):
        client.messages.create(model=ANTHROPIC_MODEL, max_tokens=16, messages=MESSAGES)
    with pytest.raises(anthropic.RateLimitError) as raised:
        client.messages.create(model=ANTHROPIC_MODEL, max_tokens=16, messages=MESSAGES)
    client.close()
    assert raised.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert len(upstream.received) == 3
