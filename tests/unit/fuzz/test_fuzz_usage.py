"""Usage accounting over hostile bodies and streams: never raises, never invents usage, and
for a stream the answer does not depend on how the bytes were cut into chunks.

Streams are built from the event shapes providers send (chat chunks, the usage-only chunk,
Groq's ``x_groq``, the Responses API, Azure's choices-less filter chunk), written compact,
spaced or pretty-printed over several ``data:`` lines, with LF or CRLF per event, among
comments, ``[DONE]``, field-only events, non-UTF-8 bytes, broken JSON and huge events.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import event, given
from hypothesis import strategies as st

from proxy.core.usage import Usage, usage_from_json
from proxy.core.usage_sse import MAX_EVENT_BYTES, SseUsageScanner, UsageEventStripper
from tests.unit.fuzz.budget import fuzz
from tests.unit.fuzz.sse_oracle import dispatched


class Event:
    """One generated event and what it should mean (a plain class: Hypothesis would print a
    dataclass field by field, 300 kB of a huge event included)."""

    __slots__ = ("identity", "raw", "usage", "usage_only")

    def __init__(
        self,
        raw: bytes,
        usage: tuple[int, int] | None = None,
        identity: tuple[Any, Any] | None = None,
        usage_only: bool = False,
    ) -> None:
        self.raw = raw
        """The event as sent, blank line included."""
        self.usage = usage
        self.identity = identity
        """``(model, id)`` of a JSON object event (what the scanner may take them from)."""
        self.usage_only = usage_only
        """``choices: []`` with a usage object: what the stripper must remove."""

    def __repr__(self) -> str:
        shown = self.raw if len(self.raw) < 300 else self.raw[:150] + b"..." + self.raw[-100:]
        return f"Event({shown!r}, len={len(self.raw)}, usage={self.usage})"


def _json(obj: dict[str, Any], style: int) -> list[bytes]:
    """The payload as ``data:`` line contents: compact, spaced, or one line per JSON line."""
    if style == 0:
        return [orjson.dumps(obj)]
    if style == 1:
        return [json.dumps(obj).encode()]
    return json.dumps(obj, indent=1).encode().split(b"\n")


def _event(lines: list[bytes], eol: bytes) -> bytes:
    return b"".join(line + eol for line in lines) + eol


def _data(payload: list[bytes]) -> list[bytes]:
    return [b"data: " + line for line in payload]


counts = st.integers(0, 10**7)
models = st.sampled_from(["gpt-4o-mini", "llama-3.1-8b-instant", "o3", "m\u00e9"])
ids = st.sampled_from(["chatcmpl-9", "resp_2", "x"])
styles = st.integers(0, 2)
eols = st.sampled_from([b"\n", b"\r\n"])
# Bytes that are no UTF-8 and no line end, for comments and broken fields.
junk = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"") + b"\xff")


@st.composite
def events(draw: st.DrawFn, huge: bool = True) -> Event:
    kind = draw(st.integers(0, 13 if huge else 12))
    model, ident, style, eol = draw(models), draw(ids), draw(styles), draw(eols)
    p, c = draw(counts), draw(counts)
    usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    chunk: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "model": model}
    delta = [{"index": 0, "delta": {"content": draw(st.text(max_size=8))}}]
    if kind == 0:  # a content chunk; chat streams say "usage": null on each
        body = {**chunk, "choices": delta, "usage": None}
        return Event(_event(_data(_json(body, style)), eol), identity=(model, ident))
    if kind == 1:  # the usage-only chunk include_usage asks for
        body = {**chunk, "choices": [], "usage": usage}
        raw = _event(_data(_json(body, style)), eol)
        return Event(raw, (p, c), (model, ident), usage_only=True)
    if kind == 2:  # a last chunk with both a choice and usage (some providers)
        body = {**chunk, "choices": delta, "usage": usage}
        return Event(_event(_data(_json(body, style)), eol), (p, c), (model, ident))
    if kind == 3:  # Groq: usage under x_groq, on a chunk with or without choices
        choices = draw(st.sampled_from([delta, []]))
        body = {**chunk, "choices": choices, "x_groq": {"id": "req_1", "usage": usage}}
        raw = _event(_data(_json(body, style)), eol)
        return Event(raw, (p, c), (model, ident), usage_only=not choices)
    if kind == 4:  # Azure's content-filter chunk: no choices, no usage; it must stay
        body = {"choices": [], "id": "", "model": "", "prompt_filter_results": [{"i": 0}]}
        return Event(_event(_data(_json(body, style)), eol), identity=("", ""))
    if kind == 5:  # Responses API: model and id nested under "response"
        body = {"type": "response.created", "response": {"id": ident, "model": model}}
        lines = [b"event: response.created", *_data(_json(body, style))]
        return Event(_event(lines, eol), identity=(model, ident))
    if kind in (6, 13):  # response.completed echoes the whole output: may be huge
        size = draw(st.integers(70_000, 300_000)) if kind == 13 else draw(st.integers(0, 40))
        response = {"id": ident, "model": model, "output": [{"text": "w" * size}],
                    "usage": {"input_tokens": p, "output_tokens": c}}  # fmt: skip
        body = {"type": "response.completed", "response": response}
        lines = [b"event: response.completed", *_data(_json(body, style))]
        return Event(_event(lines, eol), (p, c), (model, ident))
    if kind == 7:
        return Event(_event([b":" + draw(st.sampled_from([b"", b" keep-alive", b" "])) +
                             draw(junk)], eol))  # fmt: skip
    if kind == 8:
        return Event(_event([b"data: [DONE]"], eol))
    if kind == 9:  # fields but no data: nothing is dispatched
        fields = [b"event: ping", b"id: 7", b"retry: 3000", b"event: " + draw(junk)]
        return Event(_event(draw(st.lists(st.sampled_from(fields), min_size=1)), eol))
    if kind == 10:  # broken JSON that still looks like usage to a substring search
        text = orjson.dumps({**chunk, "choices": [], "usage": usage})
        cut = draw(st.integers(1, len(text) - 1))
        return Event(_event([b"data: " + draw(st.sampled_from([text[:cut], text + b"}"]))], eol))
    if kind == 11:  # non-UTF-8 where JSON should be
        return Event(_event([b"data: " + draw(junk)], eol))
    # A chunk bigger than the stripper holds (a whole tool call in one chunk, say).
    size = draw(st.integers(MAX_EVENT_BYTES, 2 * MAX_EVENT_BYTES)) if kind == 13 else 9
    body = {**chunk, "choices": [{"index": 0, "delta": {"content": "t" * size}}], "usage": None}
    return Event(_event(_data(_json(body, style)), eol), identity=(model, ident))


def cuts(stream: bytes) -> st.SearchStrategy[list[int]]:
    """Where to cut ``stream`` into chunks (positions, so a failure prints short)."""
    return st.lists(st.integers(0, len(stream)), max_size=12).map(lambda at: sorted(set(at)))


def _pieces(stream: bytes, cut_at: list[int]) -> list[bytes]:
    return [stream[a:b] for a, b in zip([0, *cut_at], [*cut_at, len(stream)], strict=True)]


def _expected(sent: list[Event]) -> Usage | None:
    """The last usage reported, completed with the first JSON event's model and id."""
    first = next((e.identity for e in sent if e.identity is not None), (None, None))
    last = next((e for e in reversed(sent) if e.usage is not None), None)
    if last is None:
        return None
    assert last.usage is not None
    assert last.identity is not None
    return Usage(*last.usage, last.identity[0] or first[0], last.identity[1] or first[1])


def _scan(pieces: list[bytes]) -> Usage | None:
    scanner = SseUsageScanner()
    for piece in pieces:
        scanner.feed(piece)
    return scanner.result()


def _strip(pieces: list[bytes]) -> bytes:
    stripper = UsageEventStripper()
    out = [stripper.strip(piece) for piece in pieces]
    return b"".join(out) + stripper.flush()


def _is_usage_only(dispatched: tuple[bytes, bytes]) -> bool:
    try:
        obj = orjson.loads(dispatched[1])
    except orjson.JSONDecodeError:
        return False
    if not isinstance(obj, dict) or obj.get("choices") != []:
        return False
    groq = obj.get("x_groq")
    return isinstance(obj.get("usage"), dict) or (
        isinstance(groq, dict) and isinstance(groq.get("usage"), dict)
    )


streams = st.lists(events(), max_size=10)
small_streams = st.lists(events(huge=False), max_size=5)


@fuzz(120)
@given(st.data(), streams)
def test_scanner_reads_the_last_usage_however_the_stream_is_cut(
    data: st.DataObject, sent: list[Event]
) -> None:
    """Any chunking gives the same result as the whole stream: the real usage, or none."""
    stream = b"".join(e.raw for e in sent)
    expected = _expected(sent)
    event("usage" if expected else "no usage")
    if len(stream) > MAX_EVENT_BYTES:
        event("longer than MAX_EVENT_BYTES")
    assert _scan([stream]) == expected
    assert _scan(_pieces(stream, data.draw(cuts(stream)))) == expected


@fuzz(120)
@given(st.data(), streams)
def test_stripper_removes_exactly_the_usage_only_events(
    data: st.DataObject, sent: list[Event]
) -> None:
    """The caller gets every byte of the stream except the usage-only events, however cut."""
    stream = b"".join(e.raw for e in sent)
    expected = b"".join(e.raw for e in sent if not e.usage_only)
    assert _strip([stream]) == expected
    assert _strip(_pieces(stream, data.draw(cuts(stream)))) == expected


@fuzz(60)
@given(small_streams)
def test_every_split_point_gives_the_whole_stream_answer(sent: list[Event]) -> None:
    """Cut in two at each byte, or fed byte by byte: the same usage and the same bytes out."""
    stream = b"".join(e.raw for e in sent)
    usage, stripped = _scan([stream]), _strip([stream])
    for at in range(len(stream) + 1):
        halves = [stream[:at], stream[at:]]
        assert _scan(halves) == usage, at
        assert _strip(halves) == stripped, at
    single_bytes = [stream[i : i + 1] for i in range(len(stream))]
    assert _scan(single_bytes) == usage
    assert _strip(single_bytes) == stripped


@fuzz(120)
@given(st.data(), st.lists(st.tuples(events(), st.sampled_from([b"", b"\n", b"\r\n"])), max_size=8))
def test_stray_blank_lines_change_nothing_a_client_sees(
    data: st.DataObject, sent: list[tuple[Event, bytes]]
) -> None:
    """With extra blank lines between events the caller still receives every event but
    the usage-only ones, as an EventSource would parse them, and the usage is unchanged."""
    stream = b"".join(e.raw + blank for e, blank in sent)
    pieces = _pieces(stream, data.draw(cuts(stream)))
    kept = [d for d in dispatched(stream) if not _is_usage_only(d)]
    assert dispatched(_strip(pieces)) == kept
    assert _scan(pieces) == _expected([e for e, _ in sent])


@fuzz(200)
@given(st.lists(st.binary(max_size=80), max_size=12))
def test_random_bytes_never_raise_nor_invent_usage(pieces: list[bytes]) -> None:
    """Bytes that are no event stream yield no usage and pass the stripper untouched."""
    stream = b"".join(pieces)
    assert _scan(pieces) is None or b"usage" in stream
    assert _strip(pieces) == stream or b"usage" in stream


# --- whole JSON bodies -------------------------------------------------------------------

USAGE_KEYS = ["prompt_tokens", "completion_tokens", "input_tokens", "output_tokens"]
leaves = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4)
)
usage_dicts = st.dictionaries(st.sampled_from([*USAGE_KEYS, "total_tokens"]), leaves, max_size=4)
bodies = (
    st.recursive(
        st.fixed_dictionaries(
            {}, optional={"usage": usage_dicts | leaves, "model": leaves, "id": leaves}
        ),
        lambda inner: st.fixed_dictionaries(
            {}, optional={"response": inner, "x_groq": inner, "usage": usage_dicts | inner}
        ),
        max_leaves=6,
    )
    | st.lists(leaves, max_size=3)
    | leaves
)


def _readable(value: object) -> int | None:
    """A token count the body really states: a non-negative integer, booleans excluded."""
    return value if type(value) is int and value >= 0 else None


def _reference_usage(body: object) -> tuple[int, int] | None:
    """What a response says it cost, read the documented way, or None when it does not say."""
    if not isinstance(body, dict):
        return None
    obj: dict[str, Any] = body["response"] if isinstance(body.get("response"), dict) else body
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        groq = obj.get("x_groq")
        usage = groq.get("usage") if isinstance(groq, dict) else None
        if not isinstance(usage, dict):
            return None
    prompt = usage["prompt_tokens"] if "prompt_tokens" in usage else usage.get("input_tokens")
    done = (
        usage["completion_tokens"] if "completion_tokens" in usage else usage.get("output_tokens")
    )
    read = _readable(prompt), _readable(done)
    if read == (None, None):
        return None
    return read[0] or 0, read[1] or 0


@fuzz(400)
@given(bodies, st.booleans())
def test_usage_from_json_reports_only_what_the_body_states(body: object, pretty: bool) -> None:
    """Any JSON yields its stated non-negative counts, or None: never a made-up zero."""
    raw = json.dumps(body, indent=pretty or None).encode() if _jsonable(body) else b"{"
    found = usage_from_json(raw)
    # Integers past 64 bits are beyond orjson: such a body is unreadable, so it has no usage.
    expected = _reference_usage(json.loads(raw)) if _fits_orjson(raw) else None
    event("usage" if expected else "none")
    assert (found.input_tokens, found.output_tokens) == expected if found else expected is None


def _fits_orjson(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def _jsonable(body: object) -> bool:
    try:
        json.dumps(body, allow_nan=False)
    except ValueError:
        return False
    return True


@fuzz(100)
@given(counts, counts, st.booleans(), st.sampled_from([b"", b"\n", b" \r\n"]))
def test_a_truncated_body_has_no_usage(p: int, c: int, nested: bool, trailer: bytes) -> None:
    """Every cut of a body short of its closing brace yields None, never a partial usage."""
    names = ("input_tokens", "output_tokens") if nested else ("prompt_tokens", "completion_tokens")
    usage = dict(zip(names, (p, c), strict=True))
    obj: dict[str, Any] = {"id": "r", "model": "m", "usage": usage}
    body = orjson.dumps({"response": obj} if nested else obj) + trailer
    for at in range(len(body) + 1):
        found = usage_from_json(body[:at])
        if body[:at].rstrip() == body.rstrip():
            assert found == Usage(p, c, "m", "r")
        else:
            assert found is None, body[:at]


@fuzz(200)
@given(st.binary(max_size=200))
def test_non_json_bytes_have_no_usage(body: bytes) -> None:
    """Bytes that are not JSON (non-UTF-8 included) yield None rather than raising."""
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        assert usage_from_json(body) is None


@fuzz(80)
@given(
    st.lists(events(huge=False), max_size=2),
    st.lists(events(huge=False), min_size=1, max_size=3),
    st.integers(MAX_EVENT_BYTES, 2 * MAX_EVENT_BYTES),
    eols,
    st.integers(-6, 3),
)
def test_an_event_too_long_to_hold_passes_whole_wherever_it_is_cut(
    before: list[Event], after: list[Event], size: int, eol: bytes, near_end: int
) -> None:
    """The stripper passes an over-long event on unread; what follows is still stripped
    exactly, even when a chunk ends between the event's last line and its blank line."""
    body = {"choices": [{"index": 0, "delta": {"content": "t" * size}}], "usage": None}
    long = Event(_event(_data(_json(body, 0)), eol))
    head = b"".join(e.raw for e in before)
    stream = head + long.raw + b"".join(e.raw for e in after)
    expected = b"".join(e.raw for e in [*before, long, *after] if not e.usage_only)
    cut = len(head) + len(long.raw) + near_end
    pieces = [stream[: len(head)], stream[len(head) : cut], stream[cut:]]
    assert _strip(pieces) == expected
    assert _scan(pieces) == _expected([*before, long, *after])
