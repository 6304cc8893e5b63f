"""The lean HTTP/1.1 client against aiohttp's ClientSession, on the same scripted upstreams.

Every case is a raw-TCP script (``tests.support.scripted_upstream``) and a few calls.
Both clients run it, each against its own fresh server, and must agree on what a
caller can observe (``tests.support.differential``): per call the status, the header
fields (raw bytes) and the body, or an error before the head or inside the body. Each
case also pins the outcome and how many requests the upstream read, so a replayed
``POST`` shows. Where the two differ on purpose, ``differs`` says how and why; ADR 0003
lists the same differences.
"""

from __future__ import annotations

import pytest

from tests.support.differential import (
    BODY_ERROR,
    HANGS,
    HEAD_ERROR,
    Call,
    Case,
    Observed,
    observed,
    run_lean,
    run_reference,
)
from tests.support.scripted_upstream import (
    CLOSE,
    READ,
    RESET,
    Flood,
    Pause,
    ScriptedUpstream,
    Step,
    Write,
    response,
)

GET, POST, HEAD = Call(), Call("POST", b'{"model": "m"}'), Call("HEAD")
LATER_GET, LATER_POST = Call(pause=0.05), Call("POST", b"{}", pause=0.05)
FIRST, SECOND = response(200, b"first"), response(200, b"second")
OK_FIRST, OK_SECOND = (200, b"first"), (200, b"second")
SECOND_CONNECTION: list[Step] = [READ, Write(SECOND)]
STALE_AFTER_FIRST: list[Step] = [READ, Write(FIRST), READ, CLOSE]
CHUNKED, CLOSING = "Transfer-Encoding: chunked", "Connection: close"
SETTLE = Pause(0.05)
"""Before a reset: lets the client read what came first (a RST may discard unread bytes)."""
SAME_READ = (
    "Bytes that are no response, right behind a complete one in the same read: aiohttp fails "
    "the complete response (a parser error), the lean client returns it and drops the "
    "connection; aiohttp returns it too when the bytes come in a later read."
)


def _one(
    id: str,
    steps: list[Step],
    expected: Observed,
    call: Call = GET,
    *,
    differs: str = "",
    reference: Observed | None = None,
) -> Case:
    """A case of one connection and one call."""
    references = None if reference is None else [reference]
    return Case(id, [steps], [call], [expected], 1, differs=differs, reference=references)


def _head(*lines: bytes, body: bytes = b"ok") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\n" + b"".join(lines) + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def _fields(count: int, size: int = 1) -> bytes:
    return b"".join(b"X-F%d: %s\r\n" % (index, b"v" * size) for index in range(count))


def _after(first: bytes, *scripted: Step) -> list[list[Step]]:
    """A first connection answering ``first``, then playing on; a second answering SECOND."""
    return [[READ, Write(first), *scripted], SECOND_CONNECTION]


# fmt: off
CASES = [
    # Keep-alive: stale connections, and what may be sent twice.
    Case("idle-connection-closed-by-server", _after(FIRST, CLOSE), [GET, LATER_POST],
         [OK_FIRST, OK_SECOND], requests=2),
    Case("close-after-reading-post-is-not-replayed", _after(FIRST, READ, CLOSE), [POST, POST],
         [OK_FIRST, HEAD_ERROR], requests=2),
    Case("reset-after-reading-post-is-not-replayed", _after(FIRST, READ, RESET), [POST, POST],
         [OK_FIRST, HEAD_ERROR], requests=2),
    Case("close-after-reading-get-is-sent-again", _after(FIRST, READ, CLOSE), [GET, GET],
         [OK_FIRST, OK_SECOND], requests=3),
    Case("get-sent-again-on-a-new-connection", [STALE_AFTER_FIRST, STALE_AFTER_FIRST,
         SECOND_CONNECTION], [Call(together=2), GET], [OK_FIRST, OK_FIRST, OK_SECOND],
         requests=4, differs="aiohttp sends the GET again on the other idle connection, as "
         "stale; the lean client on a new one.", reference=[OK_FIRST, OK_FIRST, HEAD_ERROR]),
    Case("reset-before-head-on-a-new-connection", [[READ, RESET], SECOND_CONNECTION], [GET],
         [HEAD_ERROR], requests=1, differs="aiohttp sends an idempotent request again after "
         "any drop; the lean client only after a reused connection's (the idle-close race): a "
         "new connection dropped is the upstream's fault, for the breaker to count.",
         reference=[OK_SECOND], reference_requests=2),
    # A body without length or chunking ends at a clean close.
    Case("close-delimited-http11", _after(response(200, b"to the end", length=False), CLOSE),
         [GET, LATER_GET], [(200, b"to the end"), OK_SECOND], requests=2),
    _one("close-delimited-http10", [READ, Write(response(200, b"old", version="1.0",
         length=False)), CLOSE], (200, b"old")),
    _one("close-delimited-despite-keep-alive", [READ, Write(response(200, b"x",
         "Connection: keep-alive", length=False)), CLOSE], (200, b"x")),
    _one("close-delimited-in-pieces", [READ, Write(response(200, b"a", length=False)),
         Pause(0.05), Write(b"b"), CLOSE], (200, b"ab")),
    _one("transfer-coding-not-chunked-is-close-delimited", [READ, Write(response(
         200, b"zz", "Transfer-Encoding: gzip", length=False)), CLOSE], (200, b"zz")),
    _one("close-delimited-cut-by-reset", [READ, Write(response(200, b"part", length=False)),
         SETTLE, RESET], BODY_ERROR, differs="A RST is no end of a body: the lean client "
         "reports the cut; aiohttp returns what came as if complete.", reference=(200, b"part")),
    _one("chunked-then-close", [READ, Write(response(200, b"2\r\nok\r\n0\r\n\r\n", CHUNKED,
         CLOSING, length=False)), CLOSE], (200, b"ok")),
    _one("chunked-cut-by-close", [READ, Write(response(200, b"2\r\nok\r\n", CHUNKED, CLOSING,
         length=False)), CLOSE], BODY_ERROR),
    _one("length-cut-by-close", [READ, Write(response(200, b"ok", CLOSING, "Content-Length: 5",
         length=False)), CLOSE], BODY_ERROR),
    Case("connection-close-then-a-new-connection", _after(response(200, b"first", CLOSING)),
         [GET, GET], [OK_FIRST, OK_SECOND], requests=2),
    Case("http10-keep-alive-is-reused", [[READ, Write(response(200, b"first",
         "Connection: keep-alive", version="1.0")), READ, Write(SECOND)]], [GET, GET],
         [OK_FIRST, OK_SECOND], requests=2),
    # Bytes after a complete response reach no response.
    Case("stray-response-after-the-body", _after(FIRST + response(200, b"stray"), READ,
         Write(FIRST)), [GET, LATER_GET], [OK_FIRST, OK_SECOND], requests=2),
    Case("body-longer-than-its-content-length", _after(FIRST + b"tail", READ, Write(FIRST)),
         [GET, LATER_GET], [OK_FIRST, OK_SECOND], requests=2, differs=SAME_READ,
         reference=[HEAD_ERROR, OK_SECOND]),
    Case("stray-response-while-idle", _after(FIRST, Pause(0.02), Write(response(200, b"stray"))),
         [GET, Call(pause=0.1)], [OK_FIRST, OK_SECOND], requests=2, differs="aiohttp parses "
         "an idle connection and hands the stray response to the next request (a desync); the "
         "lean client drops a connection that speaks unasked.",
         reference=[OK_FIRST, (200, b"stray")], reference_requests=1),
    Case("stray-crlf-while-idle", _after(FIRST, Pause(0.02), Write(b"\r\n"), READ, Write(FIRST)),
         [GET, Call(pause=0.1)], [OK_FIRST, OK_SECOND], requests=2, differs="aiohttp skips a "
         "CRLF between responses (llhttp does) and reuses the connection; the lean client drops "
         "it on any byte unasked.", reference=[OK_FIRST, OK_FIRST]),
    _one("duplicate-content-length", [READ, Write(_head(b"Content-Length: 2\r\n"))], HEAD_ERROR),
    _one("duplicate-content-length-differing", [READ, Write(_head(b"Content-Length: 5\r\n",
         body=b"okabc"))], HEAD_ERROR),
    _one("content-length-list", [READ, Write(response(200, b"ok", "Content-Length: 2, 2",
         length=False))], HEAD_ERROR),
    _one("chunked-and-content-length", [READ, Write(response(200, b"2\r\nok\r\n0\r\n\r\n",
         CHUNKED, "Content-Length: 9", length=False))], HEAD_ERROR),
    # Informational heads are skipped; some statuses have no body whatever the head says.
    _one("100-continue-then-200", [READ, Write(b"HTTP/1.1 100 Continue\r\n\r\n" + FIRST)],
         OK_FIRST, POST),
    _one("100-and-103-then-200", [READ, Write(b"HTTP/1.1 100 Continue\r\n\r\n"), Pause(0.02),
         Write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" + FIRST)],
         OK_FIRST, POST),
    Case("204-then-reuse", [[READ, Write(response(204, b"")), READ, Write(FIRST)]], [GET, GET],
         [(204, b""), OK_FIRST], requests=2),
    Case("204-with-a-bogus-length-and-body", _after(response(204, b"", "Content-Length: 5",
         length=False) + b"hello"), [GET, LATER_GET], [(204, b""), OK_SECOND], requests=2,
         differs=SAME_READ, reference=[HEAD_ERROR, OK_SECOND]),
    Case("304-with-a-bogus-length", [[READ, Write(response(304, b"", "Content-Length: 5",
         length=False)), READ, Write(FIRST)]], [GET, GET], [(304, b""), OK_FIRST], requests=2),
    Case("head-with-content-length", _after(response(200, b"", "Content-Length: 100",
         length=False), READ, Write(SECOND)), [HEAD, GET], [(200, b""), OK_SECOND], requests=2,
         differs="Not in the outcome: aiohttp reuses the connection after a HEAD, the lean "
         "client opens a new one (llhttp would wait for the body the head announced)."),
    Case("head-answered-with-a-body-anyway", _after(response(200, b"", "Content-Length: 5",
         length=False) + b"hello", READ, Write(SECOND)), [HEAD, LATER_GET], [(200, b""),
         OK_SECOND], requests=2, differs=SAME_READ, reference=[HEAD_ERROR, OK_SECOND]),
    # Head limits: aiohttp's (128 fields, 8190 bytes a field); and memory stays bounded.
    _one("header-flood", [READ, Write(b"HTTP/1.1 200 OK\r\n"), Flood(b"X-Flood: 1\r\n", 200_001),
         Write(b"Content-Length: 2\r\n\r\nok")], HEAD_ERROR),
    _one("128-fields-pass", [READ, Write(_head(_fields(127)))], (200, b"ok")),
    _one("129-fields-fail", [READ, Write(_head(_fields(128)))], HEAD_ERROR),
    _one("field-of-8190-bytes-passes", [READ, Write(_head(b"X-L: %s\r\n" % (b"a" * 8187)))],
         (200, b"ok")),
    _one("field-of-8191-bytes-fails", [READ, Write(_head(b"X-L: %s\r\n" % (b"a" * 8188)))],
         HEAD_ERROR),
    _one("endless-header-line", [READ, Write(b"HTTP/1.1 200 OK\r\nX-Long: "),
         Flood(b"a", 4 * 1024 * 1024), Write(b"\r\n\r\n")], HEAD_ERROR),
    _one("endless-trailer-line", [READ, Write(response(200, b"2\r\nok\r\n", CHUNKED,
         length=False)), SETTLE, Write(b"0\r\nX-T: "), Flood(b"a", 4 * 1024 * 1024),
         Write(b"\r\n\r\n")], BODY_ERROR, differs="aiohttp refuses the trailer line but its "
         "read never returns, and no read timeout fires.", reference=HANGS),
    _one("long-status-line", [READ, Write(b"HTTP/1.1 200 " + b"r" * 9000 + b"\r\n"
         b"Content-Length: 2\r\n\r\nok")], (200, b"ok"), differs="aiohttp caps the status "
         "line at 8190 bytes; the lean client never reads the reason phrase, bounded by the "
         "256 KiB head cap.", reference=HEAD_ERROR),
    _one("head-of-320-KiB-in-fields-under-their-cap", [READ, Write(_head(_fields(40, 8000)))],
         HEAD_ERROR, differs="The lean client caps a head at 256 KiB; aiohttp only per field "
         "and count (up to 1 MiB).", reference=(200, b"ok")),
    _one("obs-fold", [READ, Write(_head(b"X-Fold: a\r\n  b\r\n"))], HEAD_ERROR,
         differs="aiohttp's lenient llhttp unfolds a folded field; the strict one rejects it, "
         "as RFC 9112 5.2 lets a proxy do (a 502).", reference=(200, b"ok")),
    # Resets and closes at every point.
    _one("reset-before-head", [READ, RESET], HEAD_ERROR, POST),
    _one("close-before-head", [READ, CLOSE], HEAD_ERROR, POST),
    _one("reset-mid-head", [READ, Write(b"HTTP/1.1 200 OK\r\nContent-Le"), RESET], HEAD_ERROR,
         POST),
    _one("close-mid-head", [READ, Write(b"HTTP/1.1 200 OK\r\nContent-Le"), CLOSE], HEAD_ERROR,
         POST),
    _one("reset-mid-body", [READ, Write(response(200, b"abc", "Content-Length: 10",
         length=False)), SETTLE, RESET], BODY_ERROR, POST),
    _one("close-mid-body", [READ, Write(response(200, b"abc", "Content-Length: 10",
         length=False)), CLOSE], BODY_ERROR, POST),
    _one("reset-mid-chunked", [READ, Write(response(200, b"5\r\nhello\r\n", CHUNKED,
         length=False)), SETTLE, RESET], BODY_ERROR, POST),
    _one("close-mid-chunked", [READ, Write(response(200, b"5\r\nhello\r\n", CHUNKED,
         length=False)), CLOSE], BODY_ERROR, POST),
    _one("close-before-the-last-chunk-ends", [READ, Write(response(200, b"5\r\nhello\r\n0\r\n",
         CHUNKED, length=False)), CLOSE], BODY_ERROR, POST),
    # Timeouts: for the head, and for each gap in the body (no total timeout).
    _one("slow-head", [READ, Pause(1.0)], HEAD_ERROR, POST),
    _one("slow-body-gap", [READ, Write(response(200, b"abc", "Content-Length: 10",
         length=False)), Pause(1.0)], BODY_ERROR, POST),
    _one("slow-but-steady-body", [READ, Write(response(200, b"", CHUNKED, length=False)),
         *[step for _ in range(5) for step in (Pause(0.1), Write(b"1\r\nx\r\n"))],
         Write(b"0\r\n\r\n")], (200, b"xxxxx"), POST),
    # Chunk extensions and trailers; header bytes.
    Case("chunked-with-extensions-and-trailers", [[READ, Write(response(200, b"", CHUNKED,
         length=False)), Write(b"5;name=value\r\nhello\r\n6;x\r\n world\r\n0\r\nX-Trailer: t"
         b"\r\n\r\n"), READ, Write(FIRST)]], [GET, GET], [(200, b"hello world"), OK_FIRST],
         requests=2),
    _one("non-utf8-header-value", [READ, Write(_head(b"X-Raw: caf\xe9 \xff\xfe\r\n"))],
         (200, b"ok")),
    _one("header-value-trailing-whitespace", [READ, Write(_head(b"X-Pad:  v \t\r\n"))],
         (200, b"ok")),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_lean_client_matches_aiohttp(case: Case) -> None:
    """The lean client and aiohttp's ClientSession observe the same outcome on this script."""
    async with ScriptedUpstream(case.scripts) as upstream:
        lean = await run_lean(upstream.origin, case.calls)
        lean_requests = len(upstream.requests)
    async with ScriptedUpstream(case.scripts) as upstream:
        reference = await run_reference(upstream.origin, case.calls)
        reference_requests = len(upstream.requests)
    assert [observed(outcome) for outcome in lean] == list(case.expected)
    assert lean_requests == case.requests
    if case.reference is None:
        assert lean == reference, "the clients differ where no difference is documented"
    else:
        assert case.differs
        assert [observed(outcome) for outcome in reference] == list(case.reference)
    expected = case.requests if case.reference_requests is None else case.reference_requests
    assert reference_requests == expected
