"""Usage of Anthropic's Messages API: a whole ``message``, or its stream's events.

- A message (``"type": "message"``) carries ``usage``: ``input_tokens``,
  ``output_tokens``, ``cache_read_input_tokens``, ``cache_creation_input_tokens``.
- A stream's ``message_start`` wraps the message with its input (and cache) counts and
  an early ``output_tokens``; each ``message_delta`` carries ``usage`` whose counts are
  cumulative (``output_tokens`` always, the input ones in newer API versions). So a
  stream's usage is the largest of each count seen: see :func:`merge_cumulative`.

Anthropic's ``input_tokens`` leaves out the prompt tokens read from or written to its
cache; OpenAI's ``prompt_tokens`` includes cached ones. :class:`AnthropicCounts` reports
the total prompt (input + cache read + cache creation) as ``input_tokens``, so that
buckets, metrics and logs count a prompt token alike whatever the provider, and the
cache counts on their own for whoever prices them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

MESSAGE = "message"
MESSAGE_START = "message_start"
MESSAGE_DELTA = "message_delta"


class AnthropicCounts(NamedTuple):
    """In the order of :class:`proxy.core.usage.Usage`'s fields."""

    input_tokens: int
    """The whole prompt: uncached input + cache read + cache creation."""
    output_tokens: int
    model: str | None
    response_id: str | None
    cached_input_tokens: int
    cache_write_tokens: int


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def anthropic_message(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The message a Messages API object is or wraps; ``None`` for anything else."""
    kind = obj.get("type")
    if kind in (MESSAGE, MESSAGE_DELTA):
        return obj
    if kind == MESSAGE_START:
        message = obj.get("message")
        return message if isinstance(message, dict) else None
    return None


def anthropic_usage(obj: dict[str, Any]) -> AnthropicCounts | None:
    """Usage of a message, ``message_start`` or ``message_delta``; ``None`` without one."""
    message = anthropic_message(obj)
    if message is None:
        return None
    usage = message.get("usage")
    if not isinstance(usage, dict):
        return None
    uncached = _count(usage.get("input_tokens"))
    output = _count(usage.get("output_tokens"))
    read = _count(usage.get("cache_read_input_tokens"))
    written = _count(usage.get("cache_creation_input_tokens"))
    if uncached is None and output is None and read is None and written is None:
        return None
    read, written = read or 0, written or 0
    model, ident = message.get("model"), message.get("id")
    return AnthropicCounts(
        (uncached or 0) + read + written,
        output or 0,
        model if isinstance(model, str) else None,
        ident if isinstance(ident, str) else None,
        read,
        written,
    )


def is_cumulative(obj: dict[str, Any]) -> bool:
    """Whether a stream event's usage adds to what came before (a ``message_delta``)."""
    return obj.get("type") == MESSAGE_DELTA
