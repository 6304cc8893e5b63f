"""The official openai and groq SDKs, unchanged but for base_url, through a running sidecar."""

from __future__ import annotations

import time

import groq
import openai
import pytest

from tests.conftest import GROQ_PROVIDER_KEY, OPENAI_PROVIDER_KEY
from tests.e2e.conftest import RunningSidecar
from tests.support.fake_upstream import STREAM_WORDS, FakeUpstream
from tests.support.sidecar import http_get

MESSAGES = [{"role": "user", "content": "Say hello."}]


def test_openai_sync_chat_completion(sidecar: RunningSidecar, upstream: FakeUpstream) -> None:
    """A sync openai client gets the upstream's completion and the provider key is swapped in."""
    client = openai.OpenAI(base_url=f"{sidecar.url}/openai/v1", api_key=sidecar.key)
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake upstream."
    assert completion.usage is not None
    assert completion.usage.total_tokens == 18
    assert raw.headers["x-correlation-id"]
    (seen,) = upstream.received
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {OPENAI_PROVIDER_KEY}"
    assert sidecar.key not in repr(seen.raw_headers)
    assert seen.headers["x-correlation-id"] == raw.headers["x-correlation-id"]


async def test_openai_async_stream(sidecar: RunningSidecar, upstream: FakeUpstream) -> None:
    """Every chunk has a choice (the sidecar's own usage request stays hidden), yet it counts."""
    client = openai.AsyncOpenAI(base_url=f"{sidecar.url}/openai/v1", api_key=sidecar.key)
    stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    words = [chunk.choices[0].delta.content async for chunk in stream]
    await client.close()
    assert words == STREAM_WORDS
    assert upstream.received[0].json()["stream_options"] == {"include_usage": True}
    counted = http_get(sidecar.process.admin_url + "/metrics")
    assert 'llm_sidecar_tokens_total{model="gpt-test",tenant="acme",type="output"' in counted


async def test_stream_usage_reaches_callers_who_ask(
    sidecar: RunningSidecar, upstream: FakeUpstream
) -> None:
    """A caller that asks for stream usage gets the final usage chunk untouched."""
    client = openai.AsyncOpenAI(base_url=f"{sidecar.url}/openai/v1", api_key=sidecar.key)
    stream = await client.chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    await client.close()
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


def test_openai_sync_stream_is_not_buffered(
    sidecar: RunningSidecar, upstream: FakeUpstream
) -> None:
    """The first chunk reaches the client before the upstream has sent its last one."""
    client = openai.OpenAI(base_url=f"{sidecar.url}/openai/v1", api_key=sidecar.key)
    stream = client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    first_at = None
    for chunk in stream:
        if first_at is None and chunk.choices:
            first_at = time.monotonic()
    assert first_at is not None
    assert upstream.last_chunk_sent_at > 0
    # The fake spaces its chunks 0.2 s apart: the whole stream takes about a second.
    assert first_at < upstream.last_chunk_sent_at - 0.5
    assert first_at - upstream.chunk_sent_at[0] < 0.15


def test_groq_sdk_sync_and_stream(sidecar: RunningSidecar, upstream: FakeUpstream) -> None:
    """The groq SDK works against /groq, streaming and not, with the groq key sent upstream."""
    client = groq.Groq(base_url=f"{sidecar.url}/groq", api_key=sidecar.key)
    completion = client.chat.completions.create(model="llama-test", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from the fake upstream."
    stream = client.chat.completions.create(model="llama-test", messages=MESSAGES, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "".join(STREAM_WORDS)
    assert [r.path for r in upstream.received] == ["/openai/v1/chat/completions"] * 2
    assert {r.headers["authorization"] for r in upstream.received} == {
        f"Bearer {GROQ_PROVIDER_KEY}"
    }


async def test_groq_async(sidecar: RunningSidecar, upstream: FakeUpstream) -> None:
    """The async groq client works too."""
    client = groq.AsyncGroq(base_url=f"{sidecar.url}/groq", api_key=sidecar.key)
    completion = await client.chat.completions.create(model="llama-test", messages=MESSAGES)
    await client.close()
    assert completion.model == "llama-test"


def test_v1_routes_by_model_prefix(sidecar: RunningSidecar, upstream: FakeUpstream) -> None:
    """On /v1 a ``groq/`` model prefix picks groq and is stripped; no prefix means openai."""
    client = openai.OpenAI(base_url=f"{sidecar.url}/v1", api_key=sidecar.key)
    client.chat.completions.create(model="groq/llama-3.1-8b-instant", messages=MESSAGES)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    models = client.models.list()
    assert [m.id for m in models.data] == ["fake-model"]
    groq_call, openai_call, models_call = upstream.received
    assert groq_call.path == "/openai/v1/chat/completions"
    assert groq_call.json()["model"] == "llama-3.1-8b-instant"
    assert groq_call.headers["authorization"] == f"Bearer {GROQ_PROVIDER_KEY}"
    assert openai_call.path == "/v1/chat/completions"
    assert openai_call.json()["model"] == "gpt-4o-mini"
    assert models_call.path == "/v1/models"


@pytest.mark.parametrize(
    ("model", "error_class", "status"),
    [
        ("fail-400", openai.BadRequestError, 400),
        ("fail-429", openai.RateLimitError, 429),
        ("fail-500", openai.InternalServerError, 500),
    ],
)
def test_upstream_errors_pass_through(
    sidecar: RunningSidecar,
    upstream: FakeUpstream,
    model: str,
    error_class: type[openai.APIStatusError],
    status: int,
) -> None:
    """Upstream 4xx/5xx bodies and headers reach the SDK unchanged (its retries off)."""
    client = openai.OpenAI(base_url=f"{sidecar.url}/openai/v1", api_key=sidecar.key, max_retries=0)
    with pytest.raises(error_class) as caught:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert caught.value.status_code == status
    assert caught.value.body == {
        "message": f"fake {status}",
        "type": "fake_error",
        "code": f"fake_{status}",
    }
    if status == 429:
        assert caught.value.response.headers["retry-after-ms"] == "10"
