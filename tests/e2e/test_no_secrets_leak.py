"""No secret leaves the sidecar: logs, spans, metrics and error bodies, scanned after a mixed run.

The run covers success (whole and streamed), 401s (missing, unknown key, a provider key
pasted as the sidecar key), 429, 403-free routing errors (404), upstream 500, 502 and
504, with debug logging and spans exported over OTLP. The scan
looks for the sidecar key, its SHA-256 digest, both provider keys and a marker that was
only ever sent inside prompts.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
import orjson

from tests.conftest import GROQ_PROVIDER_KEY, OPENAI_PROVIDER_KEY, sidecar_env
from tests.integration.test_otlp_export import http_collector
from tests.support.fake_upstream import FakeUpstream
from tests.support.sidecar import SidecarProcess, http_get

MARKER = "PROMPT-MARKER-d41d8cd98f00"


def _body(model: str, *, stream: bool = False) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "stream": stream,
            "messages": [{"role": "user", "content": f"say {MARKER} back"}],
        }
    )


async def _call(
    session: aiohttp.ClientSession, url: str, key: str | None, body: bytes
) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, await response.read()


async def test_no_key_digest_or_prompt_in_logs_spans_metrics_or_errors(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Every log line, span, metric sample and error body is free of keys, digests and prompts."""
    async with http_collector() as (endpoint, collector):
        env = sidecar_env(
            upstream,
            LLM_SIDECAR_LOG_LEVEL="debug",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        )
        process = SidecarProcess(tmp_path, env=env)
        key = await asyncio.to_thread(process.create_user, "acme", "alice")
        tiny = await asyncio.to_thread(process.create_user, "tiny", "bob", "--rpm", "1")
        await asyncio.to_thread(process.start)
        statuses: list[int] = []
        error_bodies: list[bytes] = []
        chat = process.url + "/openai/v1/chat/completions"
        calls = [
            (chat, key, _body("fake-model")),
            (chat, key, _body("fake-model", stream=True)),
            (process.url + "/v1/chat/completions", key, _body("groq/fake-model")),
            (chat, None, _body("fake-model")),
            (chat, key[:-4] + "AAAA", _body("fake-model")),
            (chat, OPENAI_PROVIDER_KEY, _body("fake-model")),
            (chat, tiny, _body("fake-model")),
            (chat, tiny, _body("fake-model")),
            (process.url + "/nowhere/v1/chat", key, _body("fake-model")),
            (chat, key, _body("fail-500")),
            (chat, key, _body("reset")),
            (chat, key, _body("hang")),
        ]
        try:
            async with aiohttp.ClientSession() as session:
                for url, caller_key, body in calls:
                    status, payload = await _call(session, url, caller_key, body)
                    statuses.append(status)
                    if status >= 400:
                        error_bodies.append(payload)
            metrics = await asyncio.to_thread(http_get, process.admin_url + "/metrics")
        finally:
            assert await asyncio.to_thread(process.stop) == 0, process.logs()
    assert statuses == [200, 200, 200, 401, 401, 401, 200, 429, 404, 500, 502, 504]
    logs = process.logs()
    spans = collector.spans()
    assert logs.count('"event":"request"') == len(calls)
    assert len(spans) >= len(calls)
    span_text = "\n".join(str(resource) + str(span) for resource, span in spans)
    secrets = {
        "sidecar key": key,
        "second sidecar key": tiny,
        "sidecar key digest": hashlib.sha256(key.encode()).hexdigest(),
        "openai provider key": OPENAI_PROVIDER_KEY,
        "groq provider key": GROQ_PROVIDER_KEY,
        "prompt marker": MARKER,
    }
    places = {
        "logs": logs,
        "spans": span_text,
        "metrics": metrics,
        "error bodies": b"\n".join(error_bodies).decode(),
    }
    leaks = [
        f"{what} in {where}"
        for what, secret in secrets.items()
        for where, text in places.items()
        if secret in text
    ]
    assert leaks == []
