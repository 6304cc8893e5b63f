"""LLM token accounting: estimate a request before it goes, read the real usage after.

- :func:`estimate_request_tokens`: what the token budget reserves at admission,
  prompt (about four characters a token) plus the output cap.
- :func:`usage_from_json`: ``usage`` of a whole JSON response.
- :func:`usage_of`: the same for one parsed object (an SSE event's, see ``usage_sse``).

Understood shapes: chat completions and legacy completions (``prompt_tokens`` /
``completion_tokens``, cached ones in ``prompt_tokens_details``), the Responses API
(``input_tokens`` / ``output_tokens``, also nested under ``response``), Groq's
``x_groq.usage``, and Anthropic's Messages API (``usage_anthropic``, told apart by its
``type``). The shape, not the upstream's kind, picks the reader: one function serves the
relay for every provider. Nothing here raises on odd input: a body it cannot read simply
yields no usage, and the reservation stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from proxy.core.usage_anthropic import anthropic_message, anthropic_usage

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
"""Role and separators the chat template adds around each message."""
REQUEST_OVERHEAD_TOKENS = 3
MEDIA_PART_TOKENS = 765
"""An image (high detail, 512x512 tiles) or audio part: its bytes are not text tokens."""
MAX_ESTIMATE = 1 << 31
_MEDIA_KEYS = frozenset({"image_url", "input_audio", "input_image", "file", "image"})
_MAX_DEPTH = 12


def _text_chars(value: object, depth: int = 0) -> int:
    """Characters of text in a JSON value, media parts counted at a flat rate."""
    if isinstance(value, str):
        return len(value)
    if depth > _MAX_DEPTH:
        return 0
    total = 0
    if isinstance(value, list):
        for item in value:
            total += _text_chars(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in _MEDIA_KEYS:
                total += MEDIA_PART_TOKENS * CHARS_PER_TOKEN
            elif key != "type":
                total += _text_chars(item, depth + 1)
    return total


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def estimate_request_tokens(payload: dict[str, object], *, default_max_output_tokens: int) -> int:
    """Prompt tokens (rough) plus the most the response may produce; never raises."""
    return estimate_tokens(payload, default_max_output_tokens=default_max_output_tokens)[1]


def estimate_tokens(
    payload: dict[str, object], *, default_max_output_tokens: int
) -> tuple[int, int]:
    """``(prompt tokens, rough; those plus the most the response may produce)``: what an
    abandoned stream is billed for its prompt, and what admission reserves. Never raises."""
    if not isinstance(payload, dict):
        return 0, default_max_output_tokens
    chars = 0
    overhead = REQUEST_OVERHEAD_TOKENS
    messages = payload.get("messages")
    if isinstance(messages, list):
        overhead += MESSAGE_OVERHEAD_TOKENS * len(messages)
        chars += _text_chars(messages)
    for field in ("prompt", "input", "instructions", "system", "tools", "functions"):
        value = payload.get(field)
        if value is not None:
            chars += _text_chars(value)
    output = (
        _positive_int(payload.get("max_completion_tokens"))
        or _positive_int(payload.get("max_tokens"))
        or _positive_int(payload.get("max_output_tokens"))
        or default_max_output_tokens
    )
    choices = _positive_int(payload.get("n")) or 1
    prompt = min(overhead + chars // CHARS_PER_TOKEN, MAX_ESTIMATE)
    return prompt, min(prompt + output * min(choices, 128), MAX_ESTIMATE)


@dataclass(slots=True)
class Usage:
    """What the upstream says a response cost, and which model and response it was."""

    input_tokens: int
    output_tokens: int
    model: str | None = None
    response_id: str | None = None
    cached_input_tokens: int = 0
    """Of ``input_tokens``, how many were read from the provider's prompt cache."""
    cache_write_tokens: int = 0
    """Of ``input_tokens``, how many were written to the provider's prompt cache."""

    def merged(self, later: Usage) -> Usage:
        """A stream's usage so far and a later cumulative report of it: the larger counts."""
        return Usage(
            max(self.input_tokens, later.input_tokens),
            max(self.output_tokens, later.output_tokens),
            later.model or self.model,
            later.response_id or self.response_id,
            max(self.cached_input_tokens, later.cached_input_tokens),
            max(self.cache_write_tokens, later.cache_write_tokens),
        )


def _count(value: object) -> int | None:
    """A token count the body really states: a non-negative integer (``true`` is none)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _usage_dict(obj: dict[str, Any]) -> dict[str, Any] | None:
    usage = obj.get("usage")
    if isinstance(usage, dict):
        return usage
    groq = obj.get("x_groq")
    if isinstance(groq, dict) and isinstance(groq.get("usage"), dict):
        found: dict[str, Any] = groq["usage"]
        return found
    return None


def _response_object(obj: dict[str, Any]) -> dict[str, Any]:
    """Responses API events wrap the response object; everything else is it."""
    inner = obj.get("response")
    return inner if isinstance(inner, dict) else obj


def _identity(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    model, ident = obj.get("model"), obj.get("id")
    return (model if isinstance(model, str) else None, ident if isinstance(ident, str) else None)


def response_identity(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """(model, id) of a response or of the response (message) a stream event wraps."""
    return _identity(anthropic_message(obj) or _response_object(obj))


def _cached(usage: dict[str, Any]) -> int:
    details = usage.get("prompt_tokens_details", usage.get("input_tokens_details"))
    if isinstance(details, dict):
        return _count(details.get("cached_tokens")) or 0
    return 0


def usage_of(obj: object) -> Usage | None:
    """``usage`` of one parsed response object or stream event; ``None`` when it has none."""
    if not isinstance(obj, dict):
        return None
    counts = anthropic_usage(obj)
    if counts is not None:
        return Usage(*counts)
    obj = _response_object(obj)
    usage = _usage_dict(obj)
    if usage is None:
        return None
    prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
    if prompt is None and completion is None:
        return None
    model, ident = _identity(obj)
    return Usage(prompt or 0, completion or 0, model, ident, _cached(usage))


def usage_from_json(body: bytes) -> Usage | None:
    """``usage`` of a whole (non-stream) JSON response; ``None`` when there is none."""
    try:
        return usage_of(orjson.loads(body))
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None
