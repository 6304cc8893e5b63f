"""The bytes the fake upstreams answer with and the request bodies the load sends."""

from __future__ import annotations

import json

MODEL = "gpt-4o-mini"

_REPLY_TEXT = (
    "Hello! This is a fixed reply from the benchmark's fake upstream. It is long enough to "
    "look like a short real answer, so the proxy copies a realistic number of bytes per call."
)

# A fixed chat completion, shaped like OpenAI's, usage block included (the sidecar reads it
# to settle the tenant's token bucket). Padded by the system fingerprint to ~712 bytes.
_REPLY = {
    "id": "chatcmpl-bench0000000000000000000000000",
    "object": "chat.completion",
    "created": 1735689600,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": _REPLY_TEXT, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 14,
        "completion_tokens": 38,
        "total_tokens": 52,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_bench",
}
TARGET_REPLY_BYTES = 712


def _padded_reply() -> bytes:
    base = json.dumps(_REPLY, separators=(",", ":")).encode()
    pad = max(0, TARGET_REPLY_BYTES - len(base))
    padded = dict(_REPLY, system_fingerprint="fp_bench" + "0" * pad)
    return json.dumps(padded, separators=(",", ":")).encode()


CHAT_REPLY = _padded_reply()


def sse_chunk(index: int, content: str, **extra: object) -> bytes:
    """One ``chat.completion.chunk`` SSE event; ``extra`` adds fields (e.g. a send stamp)."""
    event: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1735689600,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
        **extra,
    }
    if index == 0:
        event["choices"] = [
            {"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": None}
        ]
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def sse_usage_tail() -> bytes:
    """The closing usage chunk and ``[DONE]``, as OpenAI sends with include_usage."""
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1735689600,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": {"prompt_tokens": 14, "completion_tokens": 8, "total_tokens": 22},
    }
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\ndata: [DONE]\n\n"


# Events in ``static_sse_body()``: its chunks, the usage chunk and ``[DONE]``.
SSE_EVENTS_PER_STREAM = 10


def static_sse_body(chunks: int = SSE_EVENTS_PER_STREAM - 2) -> bytes:
    """A whole SSE stream served at once (nginx cannot pause between chunks)."""
    words = ["Hello", "!", " This", " is", " a", " streamed", " bench", " reply"]
    parts = [sse_chunk(i, words[i % len(words)]) for i in range(chunks)]
    return b"".join(parts) + sse_usage_tail()


def request_body(*, stream: bool) -> bytes:
    """A small, realistic chat request (~160 bytes)."""
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": 64,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()
