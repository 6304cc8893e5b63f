"""Anthropic Messages API usage (JSON and SSE) and OpenAI cached tokens, read by shape."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.core.usage import Usage, estimate_request_tokens, usage_from_json
from proxy.core.usage_sse import SseUsageScanner

MESSAGE_USAGE = {
    "input_tokens": 30,
    "cache_read_input_tokens": 40,
    "cache_creation_input_tokens": 20,
    "output_tokens": 10,
}


def _message(**usage: Any) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "hi"}],
            "usage": usage,
        }
    )


def _event(obj: dict[str, Any]) -> bytes:
    return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _stream(*, delta_usage: dict[str, int] | None = None) -> bytes:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_2",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5",
            "content": [],
            "usage": {**MESSAGE_USAGE, "output_tokens": 1},
        },
    }
    text = {"type": "text_delta", "text": "usage"}  # a text that says "usage" is not usage
    return b"".join(
        [
            _event(start),
            _event({"type": "ping"}),
            _event({"type": "content_block_delta", "index": 0, "delta": text}),
            _event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": delta_usage or {"output_tokens": 10},
                }
            ),
            _event({"type": "message_stop"}),
        ]
    )


def _scan(stream: bytes, size: int) -> Usage | None:
    scanner = SseUsageScanner()
    for at in range(0, len(stream), size):
        scanner.feed(stream[at : at + size])
    return scanner.result()


def test_message_usage_counts_the_whole_prompt_with_its_cache_tokens() -> None:
    """input_tokens is input + cache read + cache creation; the cache counts stay apart."""
    found = usage_from_json(_message(**MESSAGE_USAGE))
    assert found == Usage(90, 10, "claude-sonnet-4-5", "msg_1", 40, 20)


def test_message_without_cache_fields_or_with_nulls() -> None:
    """Older responses lack the cache fields; null ones count as none."""
    assert usage_from_json(_message(input_tokens=5, output_tokens=2)) == Usage(
        5, 2, "claude-sonnet-4-5", "msg_1"
    )
    nulls = _message(input_tokens=5, output_tokens=2, cache_read_input_tokens=None)
    assert usage_from_json(nulls) == Usage(5, 2, "claude-sonnet-4-5", "msg_1")


def test_anthropic_error_and_odd_usage_give_none() -> None:
    """An error body, a message without usage, or with garbage counts yields no usage."""
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    assert usage_from_json(orjson.dumps(error)) is None
    assert usage_from_json(orjson.dumps({"type": "message", "id": "m"})) is None
    assert usage_from_json(_message(input_tokens="5", output_tokens=True)) is None


@pytest.mark.parametrize("size", [1, 5, 64, 1 << 20])
def test_stream_joins_message_start_and_message_delta(size: int) -> None:
    """Input and cache tokens from message_start, output from message_delta, cut anywhere."""
    assert _scan(_stream(), size) == Usage(90, 10, "claude-haiku-4-5", "msg_2", 40, 20)


def test_stream_delta_with_cumulative_input_counts() -> None:
    """Newer deltas repeat the input counts cumulatively: they are not added twice."""
    delta = {**MESSAGE_USAGE, "output_tokens": 12}
    assert _scan(_stream(delta_usage=delta), 7) == Usage(
        90, 12, "claude-haiku-4-5", "msg_2", 40, 20
    )


def test_stream_cut_before_message_delta_keeps_what_message_start_said() -> None:
    """A stream cut mid-way reports message_start's counts; half an event is not read."""
    stream = _stream()
    cut = stream[: stream.index(b"event: message_delta") + 40]
    assert _scan(cut, 3) == Usage(90, 1, "claude-haiku-4-5", "msg_2", 40, 20)


def test_stream_cut_inside_message_start_has_no_usage() -> None:
    """Nothing complete, nothing counted: the reservation stands."""
    assert _scan(_stream()[:60], 4) is None


def test_openai_cached_tokens_from_prompt_and_input_details() -> None:
    """Chat's prompt_tokens_details and Responses' input_tokens_details name cached tokens."""
    chat = {
        "id": "c",
        "model": "gpt-4o",
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 64},
        },
    }
    assert usage_from_json(orjson.dumps(chat)) == Usage(100, 5, "gpt-4o", "c", 64)
    responses = {
        "id": "r",
        "object": "response",
        "model": "gpt-4.1",
        "usage": {
            "input_tokens": 50,
            "output_tokens": 3,
            "input_tokens_details": {"cached_tokens": 32},
        },
    }
    assert usage_from_json(orjson.dumps(responses)) == Usage(50, 3, "gpt-4.1", "r", 32)


def test_openai_stream_cached_tokens_reach_the_scanner() -> None:
    """The final usage chunk's cached tokens survive the scanner."""
    usage = {
        "prompt_tokens": 9,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 8},
    }
    stream = (
        b'data: {"id":"c1","model":"m","choices":[{"delta":{"content":"x"}}]}\n\n'
        b'data: {"id":"c1","choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n"
        b"data: [DONE]\n\n"
    )
    assert _scan(stream, 11) == Usage(9, 2, "m", "c1", 8)


def test_estimate_counts_anthropic_system_prompt() -> None:
    """Anthropic's top-level system prompt is part of the reserved prompt."""
    base: dict[str, object] = {"messages": [], "max_tokens": 10}
    with_system = {**base, "system": "x" * 400}
    assert (
        estimate_request_tokens(with_system, default_max_output_tokens=1)
        - estimate_request_tokens(base, default_max_output_tokens=1)
        == 100
    )
