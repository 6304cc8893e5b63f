"""UsageEventStripper: the sidecar's own usage event never reaches a caller who did not ask."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.usage_sse import MAX_EVENT_BYTES, UsageEventStripper

CHUNK = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n'
USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n'
DONE = b"data: [DONE]\n\n"
BOTH = b'data: {"choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":1}}\n\n'
COMMENT = b": keep-alive\n\n"


def _run(pieces: list[bytes]) -> bytes:
    stripper = UsageEventStripper()
    return b"".join(stripper.strip(piece) for piece in pieces) + stripper.flush()


def test_usage_only_event_is_removed() -> None:
    """Content events and [DONE] pass; the choices-less usage event does not."""
    assert _run([CHUNK, CHUNK, USAGE, DONE]) == CHUNK + CHUNK + DONE


def test_crlf_events_are_handled() -> None:
    """Upstreams that frame events with CRLF get the same treatment."""
    stream = (CHUNK + USAGE + DONE).replace(b"\n", b"\r\n")
    assert _run([stream]) == (CHUNK + DONE).replace(b"\n", b"\r\n")


def test_usage_with_choices_is_kept() -> None:
    """A final chunk that carries both a choice and usage (some providers) is kept."""
    assert _run([CHUNK, BOTH, DONE]) == CHUNK + BOTH + DONE


def test_complete_events_are_not_delayed() -> None:
    """A chunk made of whole events is forwarded at once; only a partial event waits."""
    stripper = UsageEventStripper()
    assert stripper.strip(CHUNK) == CHUNK
    assert stripper.strip(CHUNK[:10]) == b""
    assert stripper.strip(CHUNK[10:]) == CHUNK


@given(st.lists(st.integers(min_value=1, max_value=len(CHUNK + USAGE + DONE)), max_size=8))
def test_any_chunking_gives_the_same_stream(cuts: list[int]) -> None:
    """However the stream is cut into chunks, the caller sees the same bytes."""
    stream = CHUNK + CHUNK + USAGE + DONE
    points = sorted(set(cuts))
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert _run(pieces) == CHUNK + CHUNK + DONE


def test_an_event_too_long_to_hold_keeps_its_blank_line() -> None:
    """An over-long event passes unread; cut before its blank line, that line still follows it
    (it used to leave with the usage event after it, merging the event with [DONE])."""
    text = b"t" * MAX_EVENT_BYTES
    long = b'data: {"choices":[{"index":0,"delta":{"content":"' + text + b'"}}]}\n\n'
    stream = long + USAGE + DONE
    cut = len(long) - 1
    assert _run([stream[:cut], stream[cut:]]) == long + DONE


@given(
    st.lists(st.sampled_from([CHUNK, USAGE, BOTH, COMMENT, DONE]), max_size=12),
    st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_any_mix_of_events_loses_only_the_usage_only_ones(
    events: list[bytes], crlf: list[bool]
) -> None:
    """A whole stream in one read (a fast upstream): every usage-only event goes, wherever it
    is and however many there are; every other byte stays, in order, LF or CRLF framed."""
    framed = [e.replace(b"\n", b"\r\n") if c else e for e, c in zip(events, crlf, strict=False)]
    expected = b"".join(e for e, original in zip(framed, events, strict=False) if original != USAGE)
    assert _run([b"".join(framed)]) == expected
