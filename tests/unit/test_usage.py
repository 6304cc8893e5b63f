"""Token accounting: request estimates, usage from JSON bodies and SSE streams."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.usage import (
    Usage,
    estimate_request_tokens,
    usage_from_json,
)
from proxy.core.usage_sse import MAX_EVENT_BYTES, MAX_SCANNED_EVENT_BYTES, SseUsageScanner

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=30,
)


def test_estimate_counts_prompt_characters_and_the_output_cap() -> None:
    """400 characters in one message and max_tokens 100 reserve 100 + 100 + overheads."""
    payload: dict[str, object] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "x" * 400}],
        "max_tokens": 100,
    }
    estimate = estimate_request_tokens(payload, default_max_output_tokens=4096)
    assert estimate == 3 + 4 + (400 + len("user")) // 4 + 100


def test_estimate_prefers_max_completion_tokens_and_falls_back_to_the_default() -> None:
    """``max_completion_tokens`` wins over ``max_tokens``; neither means the configured cap."""
    both: dict[str, object] = {"messages": [], "max_completion_tokens": 50, "max_tokens": 999}
    assert estimate_request_tokens(both, default_max_output_tokens=4096) == 3 + 50
    neither: dict[str, object] = {"messages": []}
    assert estimate_request_tokens(neither, default_max_output_tokens=4096) == 3 + 4096


def test_estimate_reads_list_of_parts_content_and_prices_images_flat() -> None:
    """Text parts count by length; an image costs a flat amount, not its base64 size."""
    payload: dict[str, object] = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "y" * 80},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + "A" * 10**6},
                    },
                ],
            }
        ],
        "max_tokens": 1,
    }
    estimate = estimate_request_tokens(payload, default_max_output_tokens=4096)
    assert 765 < estimate < 1000


def test_estimate_multiplies_the_output_cap_by_n() -> None:
    """Asking for three choices reserves three times the output cap."""
    payload: dict[str, object] = {"prompt": "", "max_tokens": 10, "n": 3}
    assert estimate_request_tokens(payload, default_max_output_tokens=4096) == 3 + 30


@pytest.mark.parametrize(
    "payload",
    [{}, {"messages": "hi"}, {"messages": [None, 3, ["a"]]}, {"max_tokens": True},
     {"max_tokens": -5}, {"max_tokens": "12"}, {"messages": [{"content": {"deep": [[["x"]]]}}]}],
)  # fmt: skip
def test_estimate_survives_odd_shapes(payload: dict[str, object]) -> None:
    """Odd but valid JSON gives a positive estimate, never an exception."""
    assert estimate_request_tokens(payload, default_max_output_tokens=16) >= 16


@settings(max_examples=100, deadline=None)
@given(
    payload=st.dictionaries(st.sampled_from(["messages", "prompt", "max_tokens", "n", "x"]), JSON)
)
def test_estimate_never_raises_on_any_json(payload: dict[str, Any]) -> None:
    """Any JSON object yields a bounded non-negative integer."""
    estimate = estimate_request_tokens(payload, default_max_output_tokens=16)
    assert 0 <= estimate <= 1 << 31


def test_usage_from_a_chat_completion_body() -> None:
    """A non-stream chat completion's usage, model and id are read."""
    body = orjson.dumps(
        {
            "id": "chatcmpl-1",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
        }
    )
    assert usage_from_json(body) == Usage(12, 30, "gpt-4o-mini-2024-07-18", "chatcmpl-1")


def test_usage_from_responses_api_and_embeddings_bodies() -> None:
    """``input_tokens``/``output_tokens`` and an embeddings usage (no output) are read."""
    responses = b'{"id":"resp_1","model":"gpt-4.1","usage":{"input_tokens":5,"output_tokens":7}}'
    assert usage_from_json(responses) == Usage(5, 7, "gpt-4.1", "resp_1")
    embeddings = b'{"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}'
    assert usage_from_json(embeddings) == Usage(8, 0, "text-embedding-3-small", None)


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1,2]", b'{"usage": null}', b'{"usage": {"prompt_tokens": "many"}}',
     b"\xff\xfe", b'{"usage": [1]}', b"null"],
)  # fmt: skip
def test_usage_from_garbage_is_none(body: bytes) -> None:
    """Anything without a readable usage yields None, never an exception."""
    assert usage_from_json(body) is None


def _chunk(**fields: Any) -> bytes:
    return b"data: " + orjson.dumps(fields) + b"\n\n"


def _chat_stream() -> bytes:
    base = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    return b"".join(
        [
            _chunk(**base, choices=[{"index": 0, "delta": {"role": "assistant"}}], usage=None),
            *(
                _chunk(**base, choices=[{"index": 0, "delta": {"content": f"w{i} "}}], usage=None)
                for i in range(20)
            ),
            _chunk(
                **base,
                choices=[],
                usage={"prompt_tokens": 11, "completion_tokens": 21, "total_tokens": 32},
            ),
            b"data: [DONE]\n\n",
        ]
    )


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000, 1 << 20])
def test_sse_usage_found_whatever_the_chunk_boundaries(size: int) -> None:
    """Events split anywhere across chunks still yield the final usage and the first model/id."""
    stream = _chat_stream()
    scanner = SseUsageScanner()
    for at in range(0, len(stream), size):
        scanner.feed(stream[at : at + size])
    assert scanner.result() == Usage(11, 21, "gpt-4o-mini", "chatcmpl-9")


def test_sse_with_crlf_line_endings_and_comments() -> None:
    """CRLF-separated events and keep-alive comments are understood."""
    stream = (
        b": keep-alive\r\n\r\n"
        b'data: {"id":"c1","model":"m1","choices":[]}\r\n\r\n'
        b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\r\n\r\n'
        b"data: [DONE]\r\n\r\n"
    )
    scanner = SseUsageScanner()
    scanner.feed(stream[:50])
    scanner.feed(stream[50:])
    assert scanner.result() == Usage(1, 2, "m1", "c1")


def test_sse_groq_usage_in_x_groq() -> None:
    """Groq's stream reports usage under ``x_groq.usage`` in its last chunk."""
    scanner = SseUsageScanner()
    scanner.feed(_chunk(id="g1", model="llama-3.1-8b-instant", choices=[], x_groq={"id": "req_1"}))
    scanner.feed(
        _chunk(
            id="g1",
            model="llama-3.1-8b-instant",
            choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}],
            x_groq={"id": "req_1", "usage": {"prompt_tokens": 40, "completion_tokens": 9}},
        )
    )
    assert scanner.result() == Usage(40, 9, "llama-3.1-8b-instant", "g1")


def test_sse_responses_api_usage_in_the_completed_event() -> None:
    """The Responses API nests model, id and usage under ``response``."""
    scanner = SseUsageScanner()
    scanner.feed(
        b"event: response.created\n"
        b'data: {"type":"response.created","response":{"id":"resp_2","model":"gpt-4.1"}}\n\n'
        b"event: response.completed\n"
        b'data: {"type":"response.completed","response":{"id":"resp_2","model":"gpt-4.1",'
        b'"usage":{"input_tokens":3,"output_tokens":4}}}\n\n'
    )
    assert scanner.result() == Usage(3, 4, "gpt-4.1", "resp_2")


def test_sse_without_usage_is_none() -> None:
    """A stream that never reports usage (the caller turned it off) yields None."""
    scanner = SseUsageScanner()
    scanner.feed(_chunk(id="c", model="m", choices=[], usage=None))
    scanner.feed(b"data: [DONE]\n\n")
    assert scanner.result() is None


def test_sse_scanner_keeps_a_bounded_tail() -> None:
    """A huge event without a boundary is skipped whole, not buffered without end."""
    scanner = SseUsageScanner()
    scanner.feed(_chunk(id="c", model="m", choices=[]))
    scanner.feed(_chunk(choices=[], usage={"prompt_tokens": 1, "completion_tokens": 1}))
    piece = b"x" * (1 << 20)
    scanner.feed(b"data: " + piece)
    for _ in range(MAX_SCANNED_EVENT_BYTES // len(piece) + 1):
        scanner.feed(piece)
        assert len(scanner._long or b"") <= MAX_SCANNED_EVENT_BYTES
    # The skipped event's last line would parse as usage on its own: it must not be read.
    scanner.feed(b"\ndata: " + orjson.dumps({"usage": {"prompt_tokens": 7}}) + b"\n\n")
    scanner.feed(b"data: [DONE]\n\n")
    assert scanner.result() == Usage(1, 1, "m", "c")


def test_sse_usage_after_a_long_output_is_found_in_any_chunking() -> None:
    """A Responses API ``response.completed`` repeats the whole output: over 64 KiB is common."""
    completed = (
        b"event: response.completed\ndata: "
        + orjson.dumps(
            {
                "type": "response.completed",
                "response": {
                    "id": "resp_9",
                    "model": "gpt-4.1",
                    "output": [{"type": "message", "content": [{"text": "w" * 300_000}]}],
                    "usage": {"input_tokens": 12, "output_tokens": 75_000},
                },
            }
        )
        + b"\n\n"
    )
    for size in (1000, 16 * 1024, MAX_EVENT_BYTES + 1):
        scanner = SseUsageScanner()
        for at in range(0, len(completed), size):
            scanner.feed(completed[at : at + size])
        assert scanner.result() == Usage(12, 75_000, "gpt-4.1", "resp_9")


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=20))
def test_sse_scanner_never_raises_on_garbage(chunks: list[bytes]) -> None:
    """Random bytes fed in random chunks never raise."""
    scanner = SseUsageScanner()
    for chunk in chunks:
        scanner.feed(chunk)
    scanner.result()
