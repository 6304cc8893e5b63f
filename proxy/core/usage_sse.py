"""Usage in SSE streams: read the usage event on the way, and keep it from callers who
did not ask for it (the sidecar asks for it on their behalf, see ``request_body``).

- :class:`SseUsageScanner`: ``usage`` of a stream, looking at as few bytes as it can.
- :class:`UsageEventStripper`: the stream minus its usage-only events, chunk by chunk.

Both are fed chunks as they arrive, cut anywhere; neither raises on odd input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import orjson

from proxy.core.usage import Usage, response_identity, usage_of
from proxy.core.usage_anthropic import is_cumulative

MAX_EVENT_BYTES = 64 * 1024
"""The stripper passes on, unread, an event longer than this: usage-only chunks are small."""
MAX_SCANNED_EVENT_BYTES = 4 * 1024 * 1024
"""The scanner skips an event longer than this. Usage events can be long: the Responses
API's ``response.completed`` repeats the whole output before its usage."""
_USAGE_KEY = b'"usage"'
_SKIP = b" \t\r\n:"


def _usage_object_at(data: bytes, start: int = 0) -> int:
    """Where a ``"usage"`` followed by an object is, from ``start`` on, or -1 (chat streams
    send ``"usage":null`` a lot)."""
    at = data.find(_USAGE_KEY, start)
    while at != -1:
        i = at + len(_USAGE_KEY)
        end = min(len(data), i + 16)
        while i < end and data[i] in _SKIP:
            i += 1
        if i < len(data) and data[i] == 0x7B:  # '{'
            return at
        at = data.find(_USAGE_KEY, i)
    return -1


def _has_usage_object(data: bytes) -> bool:
    return _usage_object_at(data) >= 0


def _last_boundary(data: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    """``(start, end)`` of the last blank line separating events, or ``(-1, -1)``."""
    lf = data.rfind(b"\n\n", start)
    crlf = data.rfind(b"\r\n\r\n", start)
    if crlf >= 0 and crlf + 2 >= lf:
        return crlf, crlf + 4
    return (lf, lf + 2) if lf >= 0 else (-1, -1)


def _event_start(data: bytes, at: int) -> int:
    """Where the event holding ``data[at]`` begins: just after the last blank line before it."""
    lf = data.rfind(b"\n\n", 0, at)
    crlf = data.rfind(b"\r\n\r\n", 0, at)
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _usage_events(data: bytes, start: int) -> Iterator[tuple[int, int, object]]:
    """``(begin, end, parsed JSON)`` of each event of ``data`` holding a ``"usage": {``,
    from ``start`` on; the last event may lack its blank line (it then ends at the end)."""
    at = _usage_object_at(data, start)
    while at >= 0:
        end = _first_boundary_end(data, at)
        end = len(data) if end < 0 else end
        begin = _event_start(data, at)
        yield begin, end, _event_json(data[begin:end])
        at = _usage_object_at(data, end)


def _first_boundary_end(data: bytes | bytearray, start: int = 0) -> int:
    """Where the first blank line separating events ends, or -1."""
    lf = data.find(b"\n\n", start)
    crlf = data.find(b"\r\n\r\n", start)
    if lf < 0:
        return crlf + 4 if crlf >= 0 else -1
    return crlf + 4 if crlf >= 0 and crlf + 4 < lf + 2 else lf + 2


def _event_json(event: bytes) -> object:
    """The JSON of an event's ``data:`` lines; ``None`` for comments, ``[DONE]``, garbage."""
    parts = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            parts.append(line[6:] if line[5:6] == b" " else line[5:])
    if not parts:
        return None
    data = b"\n".join(parts)
    if data.strip() == b"[DONE]":
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


class SseUsageScanner:
    """Finds the usage (and the first event's model and id) in an SSE stream.

    Only the first JSON event and events carrying a ``"usage": {...}`` object are
    parsed; other chunks cost a substring search. An event split across chunks is held
    until its end arrives, up to ``MAX_SCANNED_EVENT_BYTES``; a longer one is skipped
    whole, so the result does not depend on where the stream was cut.
    """

    __slots__ = ("_found", "_id", "_long", "_model", "_seen_first", "_skipping", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        """An unfinished event of up to ``MAX_EVENT_BYTES`` (most are a few hundred)."""
        self._long: bytearray | None = None
        """A longer unfinished event, grown in place so that it costs linear time."""
        self._skipping = False
        """``_long`` only keeps the last bytes of an event too long to read, up to its end."""
        self._seen_first = False
        self._model: str | None = None
        self._id: str | None = None
        self._found: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        if self._long is not None:
            self._feed_long(self._long, chunk)
            return
        data = self._tail + chunk if self._tail else chunk
        start, end = _last_boundary(data)
        if start < 0:
            complete, rest = b"", data
        else:
            complete, rest = data[:start], data[end:]
        if len(rest) <= MAX_EVENT_BYTES:
            self._tail = rest
        else:
            self._hold_long(rest)
        if complete and (not self._seen_first or _has_usage_object(complete)):
            self._scan(complete)

    def _hold_long(self, partial: bytes) -> None:
        self._tail = b""
        self._skipping = len(partial) > MAX_SCANNED_EVENT_BYTES
        self._long = bytearray(partial[-3:] if self._skipping else partial)

    def _feed_long(self, long: bytearray, chunk: bytes) -> None:
        # Only the new bytes, and the three before them, can complete a blank line.
        seam = max(len(long) - 3, 0)
        long += chunk
        if self._skipping:
            end = _first_boundary_end(long, seam)
            if end < 0:
                del long[:-3]
                return
            self._long, self._skipping = None, False
            self.feed(bytes(long[end:]))  # what follows the skipped event is read as usual
            return
        if _last_boundary(long, seam)[0] >= 0:
            self._long = None
            self.feed(bytes(long))  # now an ordinary chunk that ends an event
        elif len(long) > MAX_SCANNED_EVENT_BYTES:
            self._skipping = True
            del long[:-3]

    def _scan(self, complete: bytes) -> None:
        """Read the first JSON event (the stream's model and id), then only the events
        holding a ``"usage": {``: the rest of ``complete`` is never split into events."""
        at, size = 0, len(complete)
        while not self._seen_first and at < size:
            end = _first_boundary_end(complete, at)
            end = size if end < 0 else end  # the last event of ``complete`` has no blank line
            obj = _event_json(complete[at:end])
            if isinstance(obj, dict):
                self._seen_first = True
                self._model, self._id = response_identity(obj)
                self._take_usage(obj)  # Anthropic's message_start carries the input side
            at = end
        for _begin, _end, obj in _usage_events(complete, at):
            if isinstance(obj, dict):
                self._take_usage(obj)

    def _take_usage(self, obj: dict[str, Any]) -> None:
        usage = usage_of(obj)
        if usage is not None:
            found = self._found
            # Anthropic's message_delta adds to message_start; others report it whole.
            self._found = found.merged(usage) if found and is_cumulative(obj) else usage

    def result(self) -> Usage | None:
        """The last usage seen, with the first event's model and id where it lacks them."""
        found = self._found
        if found is None or (found.model and found.response_id):
            return found
        return replace(
            found, model=found.model or self._model, response_id=found.response_id or self._id
        )


class UsageEventStripper:
    """Removes the usage-only event (``"choices": []``) from a stream the caller did not
    ask usage of: the sidecar added ``include_usage`` for its own accounting, and code
    reading ``chunk.choices[0]`` on every chunk must not meet an empty list.

    Incomplete trailing events are held back until their blank line arrives; an SSE
    client cannot act on half an event anyway, so no chunk reaches the caller later
    than it could be used.
    """

    __slots__ = ("_passed", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._passed: bytes | None = None
        """While an event too long to hold passes through: its last bytes already sent,
        where the blank line that ends it may begin."""

    def strip(self, chunk: bytes) -> bytes:
        """What of ``chunk`` (and any held-back part) to forward now."""
        if self._passed is not None:
            return self._pass_long(self._passed, chunk)
        data = self._tail + chunk if self._tail else chunk
        _start, end = _last_boundary(data)
        if end < 0:
            if len(data) > MAX_EVENT_BYTES:  # too long to hold: pass it on unread, to its end
                self._tail = b""
                self._passed = data[-3:]
                return data
            self._tail = data
            return b""
        complete, self._tail = data[:end], data[end:]
        if _has_usage_object(complete):  # once a stream: most chunks pass untouched
            complete = _without_usage_only_events(complete)
        return complete

    def _pass_long(self, passed: bytes, chunk: bytes) -> bytes:
        end = _first_boundary_end(passed + chunk)
        if end < 0:
            self._passed = (passed + chunk)[-3:]
            return chunk
        # The event ends in this chunk: the rest is stripped as usual.
        self._passed = None
        cut = end - len(passed)
        return chunk[:cut] + self.strip(chunk[cut:])

    def flush(self) -> bytes:
        """Whatever is still held back when the stream ends."""
        tail, self._tail = self._tail, b""
        return tail


def _without_usage_only_events(complete: bytes) -> bytes:
    """``complete`` (whole events) without its usage-only ones. Only the events holding a
    ``"usage": {`` are cut out and read; the bytes around them pass as slices, so a
    whole stream arriving in one read is not split into events to drop one."""
    kept: list[bytes] = []
    copied = 0  # complete[:copied] is decided: kept, or dropped
    for begin, end, obj in _usage_events(complete, 0):
        if isinstance(obj, dict) and obj.get("choices") == []:
            kept.append(complete[copied:begin])
            copied = end
    if not copied:
        return complete
    kept.append(complete[copied:])
    return b"".join(kept)
