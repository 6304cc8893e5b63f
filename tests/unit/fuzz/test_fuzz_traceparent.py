"""W3C trace context in, trace context out: garbled ``traceparent``/``tracestate`` never
break a request, a valid one is continued, anything else starts a fresh trace, and what
goes upstream is always well formed.

The caller's headers go through the real path: ``OtelTracing.start`` reads them, the header
filter drops the caller's trace headers, ``upstream_call`` injects the sidecar's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry.sdk.trace import Span as SdkSpan

from proxy.adapters.tracing_otel import OtelTracing
from proxy.adapters.tracing_otel_setup import tracing_from_env
from proxy.core.exchange import Exchange
from proxy.core.headers import request_headers_for_upstream
from tests.unit.fuzz.budget import fuzz

HEX = "0123456789abcdef"
# Flags: bit 0 sampled, bit 1 "random trace id" (trace-context level 2); nothing else is set.
SENT_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[0-3])", re.ASCII)
# W3C tracestate list-member (trace-context section 3.3.1.3).
MEMBER = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]",
    re.ASCII,
)
MAX_TRACEPARENT = 512  # OpenTelemetry ignores longer values (the spec sets no limit)
MAX_TRACESTATE = 8192  # and longer tracestates
UPSTREAM_URL = "https://api.openai.com/v1/chat/completions"


@pytest.fixture(scope="module")
def tracing() -> Iterator[OtelTracing]:
    """The production tracer, spans made and sampled parent-based, export off."""
    tracer = tracing_from_env({"OTEL_TRACES_EXPORTER": "none"})
    assert isinstance(tracer, OtelTracing)
    yield tracer
    tracer.shutdown()


def _hex(digits: int, zero_one_in: int = 8) -> st.SearchStrategy[str]:
    """Lower-case hex of a fixed width, all zeros (invalid as an id) about one time in eight."""
    top = (1 << (4 * digits)) - 1
    return st.integers(0, top * zero_one_in).map(lambda v: format(v % (top + 1), f"0{digits}x"))


def _rarely(draw: st.DrawFn, one_in: int) -> bool:
    return draw(st.integers(1, one_in)) == 1


ANY_BUT_CRLF = st.characters(blacklist_characters="\r\n")  # the HTTP parser rejects those


@st.composite
def traceparents(draw: st.DrawFn) -> str:
    """Valid values (any version, future-version extras, OWS) and garbled variants of them."""
    version = "00" if draw(st.booleans()) else draw(st.sampled_from(["01", "cc", "fe", "ff"]))
    version = draw(_hex(2, 1)) if _rarely(draw, 6) else version
    flags = draw(st.sampled_from(["00", "01", "03", "ff"]) | _hex(2, 1))
    value = f"{version}-{draw(_hex(32))}-{draw(_hex(16))}-{flags}"
    if _rarely(draw, 4):
        value += draw(st.sampled_from(["-", "-extra", "-00-xyz", "x", "-" + "a" * 600]))
    garble = draw(st.integers(0, 9))
    if garble == 1:  # one character upper-cased, or replaced by anything
        at = draw(st.integers(0, len(value) - 1))
        value = value[:at] + draw(st.just(value[at].upper()) | ANY_BUT_CRLF) + value[at + 1 :]
    elif garble == 2:  # one character dropped or doubled
        at = draw(st.integers(0, len(value) - 1))
        value = value[:at] + draw(st.sampled_from(["", value[at] * 2])) + value[at + 1 :]
    elif garble == 3:  # junk around it
        junk = st.text(ANY_BUT_CRLF, max_size=3)
        value = draw(junk) + value + draw(junk)
    elif garble == 4:
        value = draw(st.text(ANY_BUT_CRLF, max_size=80))
    ows = st.sampled_from(["", "", " ", "\t", " \t "])
    return draw(ows) + value + draw(ows)


def _is_valid(value: str) -> bool:
    """The W3C rules, written from the spec rather than taken from OpenTelemetry."""
    if len(value) > MAX_TRACEPARENT:
        return False
    value = value.strip(" \t")
    head, extra = value[:55], value[55:]
    parts = head.split("-")
    if [len(part) for part in parts] != [2, 32, 16, 2] or any(set(p) - set(HEX) for p in parts):
        return False
    version, trace_id, span_id, _ = parts
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return False
    if version == "00":
        return extra == ""
    return extra == "" or extra.startswith("-")  # later versions may append fields


KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
VALUE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ",=")
keys = st.one_of(
    st.tuples(st.sampled_from("abcxyz"), st.text(KEY_CHARS, max_size=10)).map("".join),
    st.tuples(
        st.text("abc019", min_size=1, max_size=6), st.text("xyz", min_size=1, max_size=4)
    ).map("@".join),
)
members = st.tuples(keys, st.text(VALUE_CHARS, min_size=1, max_size=16)).map("=".join)
unique_members = st.lists(members, min_size=1, max_size=6, unique_by=lambda m: m.split("=")[0])
tracestates = st.one_of(
    unique_members.map(",".join),  # valid lists (two spellings): the common case
    unique_members.map(" , ".join),
    st.lists(members, min_size=33, max_size=40, unique_by=lambda m: m.split("=")[0]).map(",".join),
    st.lists(
        members | st.sampled_from(["", " ", "bad key=1", "k=", "K=v", "k=v=w"]), max_size=6
    ).map(", ".join),
    st.text(ANY_BUT_CRLF, max_size=60),
    st.just("k=" + "v" * 255 + "," + ",".join(f"k{i}=v" for i in range(2000))),
)


def _expected_tracestate(value: str) -> str | None:
    """What a continued trace should carry on: the valid list, or nothing for a bad one."""
    if len(value) > MAX_TRACESTATE:
        return None
    found = [member.strip(" \t") for member in value.split(",")]
    found = [member for member in found if member]
    keys = [member.partition("=")[0] for member in found]
    if not all(MEMBER.fullmatch(m) for m in found) or len(set(keys)) != len(keys):
        return None
    if not found or len(found) > 32:
        return None
    return ",".join(found)


@st.composite
def caller_headers(draw: st.DrawFn) -> list[tuple[str, str]]:
    headers = [("Content-Type", "application/json"), ("Authorization", "Bearer llmsc-x")]
    if not _rarely(draw, 6):
        headers.append((draw(st.sampled_from(["traceparent", "Traceparent", "TRACEPARENT"])),
                        draw(traceparents())))  # fmt: skip
    if not _rarely(draw, 4):
        headers.append((draw(st.sampled_from(["tracestate", "TraceState"])), draw(tracestates)))
    if draw(st.booleans()):
        headers.append(("baggage", draw(st.text(max_size=40) | st.just("k=v," * 2100))))
    return draw(st.permutations(headers))


def _one(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


@fuzz(300)
@given(caller_headers())
def test_trace_is_continued_or_restarted_and_sent_well_formed(
    tracing: OtelTracing, headers: list[tuple[str, str]]
) -> None:
    """Valid caller context: same trace id, caller's span as parent; else a fresh trace."""
    exchange = Exchange("cid", "POST", "/openai/v1/chat/completions", 0.0)
    handle = tracing.start(exchange, CIMultiDictProxy(CIMultiDict(headers)))
    upstream = request_headers_for_upstream(headers)
    tracing.upstream_call(exchange, "POST", UPSTREAM_URL, upstream)
    exchange.status = 200
    tracing.finish(exchange, handle)

    sent = _one(upstream, "traceparent")
    assert len(sent) == 1, upstream
    match = SENT_TRACEPARENT.fullmatch(sent[0])
    assert match, sent
    trace_id, parent_id, flags = match.groups()
    assert trace_id != "0" * 32
    assert parent_id != "0" * 16
    assert trace_id == exchange.trace_id
    assert parent_id != exchange.span_id  # the client span, child of the server span
    sampled = bool(int(flags, 16) & 1)

    received = _one(headers, "traceparent")
    states = _one(upstream, "tracestate")
    assert len(states) <= 1
    for member in states[0].split(",") if states else []:
        assert MEMBER.fullmatch(member), states
    if received and _is_valid(received[0]):
        caller = received[0].strip(" \t").split("-")
        assert trace_id == caller[1]
        assert sampled == bool(int(caller[3], 16) & 1)  # parent-based sampling
        server = getattr(handle, "server", None)
        if isinstance(server, SdkSpan):
            assert server.parent is not None
            assert server.parent.is_remote
            assert format(server.parent.span_id, "016x") == caller[2]
        caller_state = _one(headers, "tracestate")
        want = _expected_tracestate(caller_state[0]) if caller_state else None
        assert states == ([want] if want else [])
        event("continued, tracestate carried on" if want else "continued")
    else:
        if received and len(parts := received[0].strip(" \t").split("-")) > 1:
            assert trace_id != parts[1]
        assert sampled  # a root span is always sampled by the default sampler
        assert states == []
        event("restarted")


@fuzz(60)
@given(st.lists(tracestates, min_size=2, max_size=3), traceparents())
def test_repeated_trace_headers_never_break_the_request(
    tracing: OtelTracing, states: list[str], traceparent: str
) -> None:
    """Several tracestate (and traceparent) fields: one well-formed context still goes out."""
    headers = [("traceparent", traceparent), ("traceparent", traceparent), *(
        ("tracestate", state) for state in states
    )]  # fmt: skip
    exchange = Exchange("cid", "GET", "/openai/v1/models", 0.0)
    handle = tracing.start(exchange, CIMultiDictProxy(CIMultiDict(headers)))
    upstream = request_headers_for_upstream(headers)
    tracing.upstream_call(exchange, "GET", UPSTREAM_URL, upstream)
    tracing.finish(exchange, handle)
    sent = _one(upstream, "traceparent")
    assert len(sent) == 1
    assert SENT_TRACEPARENT.fullmatch(sent[0])
    assert all(MEMBER.fullmatch(m) for s in _one(upstream, "tracestate") for m in s.split(","))
