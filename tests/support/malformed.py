"""A seeded generator of malformed HTTP/1.1 requests aimed at the sidecar's chat route.

Each case starts as a chat call with an ``Authorization`` and a body drawn from the
tables below (the real key for about half, so the rest of the request gets judged too),
then gets up to three mutations: method, target, version, headers, framing, content
type. ``generate`` is a pure function of its ``random.Random`` and the keys, so a seed
replays the same bytes.

The fake upstream answers 500 to JSON that is not an object or nests past Python's
recursion limit, so bodies here are objects or not JSON at all, and the deeply nested
one always goes as JSON, which the sidecar itself must refuse.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support.compressed_bodies import ENCODERS, bomb, gzip_encode, header_name

MAX_BODY_BYTES = 256 * 1024
"""The sidecar's LLM_SIDECAR_MAX_BODY_BYTES the cases are drawn against (over-limit bodies)."""
SMUGGLED = "x-fuzz-smuggled"
"""Sent only inside a target, value, trailer or body: as a header name upstream it was injected."""
FORGED = '{"event":"fuzz-forged"}'
"""A log line some cases try to forge through a newline in a target, value or model."""


@dataclass(frozen=True)
class Keys:
    """The fuzz tenant's keys: one that works, one disabled, one revoked by rotation."""

    valid: bytes
    disabled: bytes
    revoked: bytes

    def all(self) -> tuple[str, ...]:
        return tuple(key.decode() for key in (self.valid, self.disabled, self.revoked))


Framing = Callable[[bytes], tuple[list[bytes], bytes, bool]]
"""body -> (framing header lines, bytes on the wire, whether the body is left incomplete)"""


def _content_length(body: bytes) -> tuple[list[bytes], bytes, bool]:
    return [b"Content-Length: %d" % len(body)], body, False


def _chunked(body: bytes, size: int, last: bytes = b"0\r\n\r\n") -> bytes:
    chunks = (body[i : i + size] for i in range(0, len(body), size))
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + last


@dataclass
class Draft:
    """One request under construction: mutations edit it, ``wire`` renders it."""

    method: bytes = b"POST"
    target: bytes = b"/openai/v1/chat/completions"
    version: bytes = b"HTTP/1.1"
    host: list[bytes] = field(default_factory=lambda: [b"Host: 127.0.0.1"])
    correlation: list[bytes] = field(default_factory=list)
    auth: list[bytes] = field(default_factory=list)
    headers: list[bytes] = field(default_factory=list)
    body: bytes = b"{}"
    content_type: bytes | None = b"application/json"
    any_content_type: bool = True
    """False when only the sidecar's own JSON check may judge the body (module docstring)."""
    framing: Framing = _content_length
    labels: list[str] = field(default_factory=list)

    def wire(self) -> tuple[bytes, bool]:
        framing, payload, incomplete = self.framing(self.body)
        line = b" ".join(part for part in (self.method, self.target, self.version) if part)
        typed = [b"Content-Type: " + self.content_type] if self.content_type is not None else []
        lines = [line, *self.host, *self.correlation, *self.auth, *self.headers, *typed, *framing]
        return b"\r\n".join(lines) + b"\r\n\r\n" + payload, incomplete


# Values each mutation picks from, by kind. Kept dense on purpose: one line, one idea.
# fmt: off
_METHODS = {
    "lowercase": (b"get", b"post", b"Post", b"pOST"),
    "huge": (b"POST" * 16, b"POST" * 256, b"POST" * 3000),
    "non-token": (b"GE(T", "PÖST".encode(), b"G@T", b"", b"GET\x00", b"\x16\x03\x01"),
    "unusual": (b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT", b"PROPFIND", b"DELETE", b"HEAD",
                b"PUT", b"PRI", b"BREW", b"QUERY", b"GET"),
}
_TARGETS = {
    "routes": (b"/groq/openai/v1/chat/completions", b"/v1/chat/completions", b"/v1/models",
               b"/openai/v1/models", b"/v1/responses", b"/nope/v1/chat"),
    "unicode": ("/openai/v1/chät".encode(), "/v1/☃".encode(), b"/openai/v1/\xff\xfe",
                "/\uff4f\uff50\uff45\uff4e\uff41\uff49/v1".encode()),
    "percent-controls": (b"/openai/v1/chat%00/completions",
                         b"/openai/v1/chat%0d%0aX-Fuzz-Smuggled:%201",
                         b"/v1/chat/completions?q=%0d%0aX-Fuzz-Smuggled:%201",
                         b"/openai/%0d%0a%0d%0aGET%20/x-fuzz-smuggled%20HTTP/1.1",
                         b"/openai/v1/x%0a%7B%22event%22:%22fuzz-forged%22%7D"),
    "dot-segments": (b"/openai/../admin", b"/openai/v1/../../etc/passwd", b"/openai/%2e%2e/x",
                     b"/openai/./v1/models", b"/v1/..", b"/openai/v1/%2E%2E%2f..%2fx"),
    "absolute-form": (b"http://evil.example/", b"http://evil.example/openai/v1/chat/completions",
                      b"https://127.0.0.1:1/v1/models", b"//evil.example/openai/v1/models",
                      b"//evil", b"evil.example:443", b"*", b"/openai@evil.example/v1"),
    "overlong": tuple(b"/openai/v1/" + b"a" * n for n in (2000, 8100, 9000, 70000)),
    "bare-and-query": (b"/openai?x=1", b"/groq?", b"/openai", b"/v1", b"/v1?model=x", b"/", b"",
                       b"?x=1", b"/openai#frag"),
    "raw-controls": (b"/openai/v1/chat completions", b"/openai/v1/chat\tx", b"/openai/v1/\x00",
                     b"/openai/v1/chat\rX-Fuzz-Smuggled: 1",
                     b"/openai/v1/chat\nX-Fuzz-Smuggled: 1"),
}
_VERSIONS = (b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTX/1.1", b"http/1.1",
             b"HTTP/1.1 x", b"")
_HEADERS: dict[str, tuple[list[bytes], ...]] = {
    "non-ascii": ([b"X-Fuzz: " + "héllo ☃".encode()], [b"X-Fuzz: \xff\xfe\x80"],
                  ["User-Agent: 🤖".encode()]),
    "huge-value": tuple([b"X-Fuzz: " + b"v" * n] for n in (1000, 8000, 9000, 70000)),
    "many": tuple([b"X-Fuzz-%d: %d" % (i, i) for i in range(n)] for n in (50, 120, 300)),
    "bad-name": ([b"X Fuzz: 1"], [b"X(Fuzz): 1"], ["X-Fü: 1".encode()], [b": no-name"],
                 [b"X-Fuzz : 1"], [b"NoColonAtAll"], [b"X-Fuzz-Smuggled\x00: 1"],
                 [b"X-Fuzz-Smuggled\r: 1"]),
    "controls-in-value": ([b"X-Fuzz: a\rX-Fuzz-Smuggled: 1"], [b"X-Fuzz: a\nX-Fuzz-Smuggled: 1"],
                          [b"X-Fuzz: a\x00X-Fuzz-Smuggled: 1"], [b"X-Fuzz: \x01\x7f"],
                          [b"X-Fuzz: a\n" + FORGED.encode()]),
    "obs-fold": ([b"X-Fuzz: a", b" X-Fuzz-Smuggled: 1"], [b"X-Fuzz: a", b"\tb"]),
    "hop-by-hop": ([b"Connection: keep-alive, X-Fuzz-Hop", b"X-Fuzz-Hop: 1"],
                   [b"Connection: Upgrade", b"Upgrade: websocket"],
                   [b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
                    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"],
                   [b"TE: trailers"], [b"Keep-Alive: timeout=999999"],
                   [b"Proxy-Connection: keep-alive"]),
    "correlation-id": ([b"X-Correlation-ID: "], [b"X-Correlation-ID: " + b"x" * 200],
                       ["X-Correlation-ID: é".encode()], [b"X-Correlation-ID: a,b"],
                       [b"X-Correlation-ID: " + FORGED.encode()], []),
    "trace-context": ([b"traceparent: 00-zz-yy-01"], [b"traceparent: " + b"0" * 55],
                      [b"traceparent: ff-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"],
                      [b"tracestate: " + b"k=v," * 300], [b"baggage: " + b"a=" * 2000]),
    "expect": ([b"Expect: 100-continue"], [b"Expect: 100-continue, 200-ok"], [b"Expect: garbage"]),
    "forwarding": ([b"X-Forwarded-Host: evil.example"], [b"Forwarded: for=x;host=evil.example"],
                   [b"X-Original-URL: /admin"], [b"X-Forwarded-For: 1.2.3.4, ' OR 1=1"]),
    "credentials": ([b"api-key: garbage"], [b"x-api-key: garbage"], [b"Cookie: session=x"],
                    [b"Proxy-Authorization: Basic Zm9vOmJhcg=="]),
    "host": ([], [b"Host: a", b"Host: b"], [b"Host: evil.example"], [b"Host: 1.2.3.4:1@evil"],
             [b"Host: a b"], [b"Host: " + b"h" * 300], ["Host: é.example".encode()]),
}
_CONTENT_TYPES = (b"text/plain", b"application/json; charset=utf-16", b"application/jsonx",
                  b"json", b"", b"application/x-www-form-urlencoded",
                  b"multipart/form-data; boundary=", "application/json; charset=é".encode(), None)
_ODD_LENGTHS = (b"+%d", b"0x%x", b"-1", b" %d ", b"%d, %d", b"%de0", b"9" * 23, b"", b"%d\x00")
_ODD_CHUNKS = (b"zz\r\n", b"f" * 20 + b"\r\n", b"-1\r\n", b"1;x=\x00\r\nx\r\n", b"2\r\nabc\r\n")
_ENCODINGS = (b"gzip, chunked", b"chunked, gzip", b"xchunked", b"chunked\x00", b"Chunked",
              b"chunked, chunked", b"identity")
_MODELS = ("gpt-test", "groq/llama-3.1-8b-instant", "openai/gpt-test", "nope/model", "/", "",
           "gpt\x00x", "x\r\nX-Fuzz-Smuggled: 1", "x\n" + FORGED, "\uff47\uff50\uff54", "m" * 5000)
_WRONG_TYPES: dict[str, tuple[object, ...]] = {
    "model": (123, None, [], {}, True, *_MODELS),
    "messages": ("hi", 5, None, [1, 2], [{"role": 5, "content": {"x": [1]}}], {"a": 1},
                 [{"role": "user", "content": "hi"}]),
    "stream": (True, False, "yes", 1, None, [], "true"),
    # Only values the fake upstream's stream handler can read (it calls .get on them).
    "stream_options": (None, {}, {"include_usage": "maybe"}, {"include_usage": False}, 0, "", []),
    "max_tokens": (-1, 0, "1000", 1.5, 10**18, True, None),
    "n": (0, -5, 10**6, "3", None),
    "temperature": ("hot", -1, 1e308, None),
}
_NOT_JSON = (b"{nope", b'{"model": "gpt-test",}', b"{\xff\xfe}", b"{'model': 'x'}",
             b"GET /openai/x-fuzz-smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
_HUGE_NUMBERS = (b"1" + b"0" * 30, b"1" + b"0" * 5000, b"1e999", b"-1e999",
                 b"18446744073709551616", b"1.5e308")
# fmt: on


def _method(rng: random.Random, d: Draft) -> str:
    kind = rng.choice(list(_METHODS))
    d.method = rng.choice(_METHODS[kind])
    return f"method:{kind}"


def _target(rng: random.Random, d: Draft) -> str:
    kind = rng.choice(list(_TARGETS))
    d.target = rng.choice(_TARGETS[kind])
    return f"target:{kind}"


def _version(rng: random.Random, d: Draft) -> str:
    d.version = rng.choice(_VERSIONS)
    return "version:odd"


def _header(rng: random.Random, d: Draft) -> str:
    kind = rng.choice([*_HEADERS, "second-correlation-id"])
    if kind == "host":
        d.host = rng.choice(_HEADERS[kind])
    elif kind == "correlation-id":
        d.correlation = rng.choice(_HEADERS[kind])
    elif kind == "second-correlation-id":
        d.correlation.append(b"X-Correlation-ID: second-one")
    else:
        d.headers.extend(rng.choice(_HEADERS[kind]))
    return f"header:{kind}"


def _content_type(rng: random.Random, d: Draft) -> str:
    if not d.any_content_type:
        return "content-type:kept"
    d.content_type = rng.choice(_CONTENT_TYPES)
    return "content-type:odd"


def _framing(rng: random.Random, d: Draft) -> str:
    size, extra = rng.randint(1, 64), rng.choice((1, 10, 1000))
    odd_length, odd_chunks = rng.choice(_ODD_LENGTHS), rng.choice(_ODD_CHUNKS)
    encoding = rng.choice(_ENCODINGS)

    def length(body: bytes, more: int = 0) -> bytes:
        return b"Content-Length: %d" % (len(body) + more)

    def odd(body: bytes) -> bytes:
        text = odd_length.replace(b"%d", b"%d" % len(body))
        return b"Content-Length: " + text.replace(b"%x", b"%x" % len(body))

    chunked = b"Transfer-Encoding: chunked"
    framings: dict[str, Framing] = {
        "no-length": lambda body: ([], body, False),
        "same-length-twice": lambda body: ([length(body)] * 2, body, False),
        "conflicting-lengths": lambda body: ([length(body), length(body, extra)], body, False),
        "odd-length": lambda body: ([odd(body)], body, False),
        "length-and-chunked": lambda body: ([length(body), chunked], _chunked(body, size), False),
        "chunked": lambda body: ([chunked], _chunked(body, size), False),
        "bad-chunks": lambda body: ([chunked], odd_chunks + _chunked(body, size), False),
        "smuggled-trailer": lambda body: (
            [chunked],
            _chunked(body, size, b"0\r\nX-Fuzz-Smuggled: 1\r\n\r\n"),
            False,
        ),
        "odd-transfer-encoding": lambda body: (
            [b"Transfer-Encoding: " + encoding],
            _chunked(body, size),
            False,
        ),
        "truncated-length": lambda body: ([length(body, extra)], body, True),
        "truncated-chunks": lambda body: ([chunked], _chunked(body, size, b""), True),
        "length-over-limit": lambda body: ([length(body, MAX_BODY_BYTES * 4000)], body, True),
    }
    kind = rng.choice(list(framings))
    d.framing = framings[kind]
    return f"framing:{kind}"


MUTATIONS: dict[Callable[[random.Random, Draft], str], int] = {
    _method: 3,
    _target: 6,
    _version: 2,
    _header: 9,
    _framing: 7,
    _content_type: 2,
}
"""Each mutation and its weight; a request gets 0-3 of them."""


def _auth(rng: random.Random, keys: Keys) -> tuple[str, list[bytes]]:
    """The Authorization lines: the real key for a share, so the rest gets judged too."""
    key, bearer, sql = keys.valid, b"Authorization: Bearer ", b"' OR '1'='1' --"
    # fmt: off
    kinds: dict[str, tuple[int, tuple[list[bytes], ...]]] = {
        "valid": (40, ([bearer + key],)),
        "scheme-variant": (6, tuple([b"Authorization: " + scheme + key] for scheme in (
            b"bearer ", b"BEARER ", b"Bearer  ", b"Bearer\t", b"BeArEr "))),
        "valid-plus-garbage": (6, tuple([bearer + value] for value in (
            key + b"garbage", key + b" " + sql, key[:-1], key[:-1] + b"X", b"garbage " + key,
            key + b"\x00", key + b"\xff", key + b"\x7f"))),
        "folded-key": (2, ([b"Authorization: Bearer", b" " + key],)),
        "sql-injection": (5, tuple([bearer + value] for value in (
            sql, b"llmsc-'; DROP TABLE users; --", (b"llmsc-" + sql * 4)[: len(key)],
            b'" OR ""="', b"1; SELECT pg_sleep(10)"))),
        "controls": (4, tuple([bearer + value] for value in (
            b"abc\x00def", b"\x01\x02", b"a\rb", b"a\nX-Fuzz-Smuggled: 1"))),
        "unicode": (4, tuple([bearer + value] for value in (
            "ключ-🔑".encode(), "é".encode() * len(key), b"\xff\xfe" * 22))),
        "other-scheme": (4, tuple([b"Authorization: " + value] for value in (
            b"Basic dXNlcjpwYXNz", b"Token " + key, b"Bearer" + key, key, b"Bearer", b"Bearer ",
            b"", b"Digest username=x"))),
        "very-long": (3, tuple([bearer + b"k" * n] for n in (100, 4000, 8100, 9000, 70000))),
        "missing": (5, ([],)),
        "duplicate": (4, ([bearer + b"garbage", bearer + key], [bearer + key, bearer + b"x"],
                          [bearer + key, bearer + key])),
        "disabled-or-revoked": (4, ([bearer + keys.disabled], [bearer + keys.revoked])),
    }
    # fmt: on
    kind = rng.choices(list(kinds), [weight for weight, _ in kinds.values()])[0]
    return f"auth:{kind}", rng.choice(kinds[kind][1])


def _body(rng: random.Random, d: Draft) -> str:
    chat = {"model": rng.choice(_MODELS[:4]), "messages": [{"role": "user", "content": "hi"}]}
    kinds = {"chat": 30, "not-json": 15, "wrong-types": 15, "huge-numbers": 8, "deep": 6}
    kinds |= {"control-strings": 8, "empty": 5, "over-limit": 3, "form": 5, "random-bytes": 4}
    kind = rng.choices(list(kinds), list(kinds.values()))[0]
    if kind == "chat":
        d.body = json.dumps(chat).encode()
    elif kind == "not-json":
        d.body = rng.choice(_NOT_JSON)
    elif kind == "random-bytes":  # the "{" and NUL keep it from parsing as anything but an error
        d.body = b"{" + rng.randbytes(rng.choice((8, 64, 2000))) + b"\x00"
    elif kind == "wrong-types":
        fields = {name: rng.choice(values) for name, values in _WRONG_TYPES.items()}
        d.body = json.dumps({k: v for k, v in fields.items() if rng.random() < 0.7}).encode()
    elif kind == "huge-numbers":
        number = rng.choice(_HUGE_NUMBERS)
        d.body = b'{"model":"gpt-test","max_tokens":%s,"n":%s}' % (number, number)
    elif kind == "deep":
        depth = rng.choice((64, 5000))
        d.body = b'{"model":"gpt-test","messages":' + b"[" * depth + b"]" * depth + b"}"
        d.any_content_type = depth < 900
    elif kind == "control-strings":
        d.body = rng.choice(
            (
                json.dumps({**chat, "model": rng.choice(_MODELS[6:])}).encode(),
                json.dumps({**chat, "user": "\u2028\u0000"}).encode(),
                b'{"model":"\\ud800"}',
                b'{"model":"\xff"}',
            )
        )
    elif kind == "empty":
        d.body = b""
    elif kind == "over-limit":
        d.body = b'{"model":"gpt-test","pad":"' + b"a" * (MAX_BODY_BYTES + 1024) + b'"}'
    else:
        d.body, d.content_type = b"model=gpt-test&stream=true", b"application/x-www-form-urlencoded"
    return f"body:{kind}"


ANY_4XX = frozenset(range(400, 500)) - {408}
"""A refusal's statuses. Not 408: no case that expects a refusal stalls (a body case sends
all of its bytes within ``MAX_PAUSES_SECONDS`` of its head, or of a ``100 Continue``), so a
408 there means the sidecar lost track of a body that had arrived."""


@dataclass(frozen=True)
class Expect:
    """What a case may get: relayed (any non-5xx from the upstream), or one of ``own``."""

    relay: bool
    own: frozenset[int] = frozenset()
    """Statuses the sidecar may answer itself, in OpenAI's error shape."""

    def __str__(self) -> str:
        own = "4xx" if self.own == ANY_4XX else "/".join(map(str, sorted(self.own)))
        return " or ".join(part for part in ("relayed" if self.relay else "", own) if part)


RELAYED = Expect(True)
EITHER = Expect(True, ANY_4XX)
"""Relayed (the upstream judges it) or refused by the sidecar: both are right."""
REFUSED = Expect(False, ANY_4XX)


def _own(*statuses: int) -> Expect:
    return Expect(False, frozenset(statuses))


@dataclass(frozen=True, repr=False)
class Case:
    index: int
    labels: tuple[str, ...]
    method: bytes
    wire: bytes
    incomplete_body: bool
    body: bytes | None = None
    """The body as sent, framing removed and content coding kept (``None`` where the framing
    leaves it undefined): what the upstream must get, byte for byte, if it is relayed."""
    content_encoding: str | None = None
    """The ``Content-Encoding`` values sent, joined by ", " (``None``: no such header)."""
    expect: Expect | None = None
    """What the case may get, where that is known (every case: no 5xx, in any event)."""
    splits: tuple[tuple[int, float], ...] = ()
    """How ``wire`` goes out: at each offset the client pauses this many seconds before
    writing on; a negative pause waits (at most its magnitude) for ``100 Continue``."""
    prefix: str = ""
    """``b`` for the body cases, so their names and correlation ids differ from the rest."""

    @property
    def name(self) -> str:
        return f"#{self.prefix}{self.index}"

    @property
    def waits_for_continue(self) -> bool:
        return any(pause < 0 for _, pause in self.splits)

    def __str__(self) -> str:
        expect = f" (expected: {self.expect})" if self.expect is not None else ""
        return f"{self.name} {' '.join(self.labels)}{expect}: {self.wire[:300]!r}"

    __repr__ = __str__  # a failed assertion shows the case, not a MiB of its bytes


_BODY_DEFINED_BY = {"framing:chunked", "framing:smuggled-trailer", "framing:same-length-twice"}


def _sent_body(d: Draft) -> bytes | None:
    """What the framing the draft ended with makes of its body (the last framing drawn wins)."""
    framings = [label for label in d.labels if label.startswith("framing:")]
    if not framings or framings[-1] in _BODY_DEFINED_BY:
        return d.body
    return b"" if framings[-1] == "framing:no-length" else None


def _expect_header(d: Draft) -> Expect | None:
    """An ``Expect`` other than ``100-continue`` is refused: 417 when nothing else is odd."""
    values = [
        line.partition(b":")[2].strip().lower()
        for line in d.headers
        if line.lower().startswith(b"expect:")
    ]
    if all(value == b"100-continue" for value in values):
        return None
    return _own(417) if d.labels == ["auth:valid", "body:chat", "header:expect"] else REFUSED


def generate(rng: random.Random, keys: Keys, count: int) -> list[Case]:
    """``count`` cases: a pure function of the seed behind ``rng`` and the keys.

    The stream is the one this generator has always drawn: case ``i`` of a seed is the
    same bytes as before the body cases came (``body`` and ``expect`` are read off the
    finished draft, drawing nothing).
    """
    cases = []
    for index in range(count):
        d = Draft(
            correlation=[b"X-Correlation-ID: fuzz-%d" % index], headers=[b"Connection: close"]
        )
        auth, d.auth = _auth(rng, keys)
        d.labels += [auth, _body(rng, d)]
        how_many = rng.choices((0, 1, 2, 3), (3, 4, 2, 1))[0]
        for mutation in rng.choices(list(MUTATIONS), list(MUTATIONS.values()), k=how_many):
            d.labels.append(mutation(rng, d))
        wire, incomplete = d.wire()
        cases.append(
            Case(
                index,
                tuple(d.labels),
                d.method,
                wire,
                incomplete,
                body=_sent_body(d),
                expect=_expect_header(d),
            )
        )
    return cases


# --------------------------------------------------------------------------- body cases
#
# Drawn from a stream of their own (``generate_bodies``), so the cases above keep their
# bytes: a chat call with a valid key (mostly) whose body is content-coded (honestly or
# not), framed by length or by chunks (with extensions and trailers, valid or not) and
# sent in one write, in pieces with pauses, or after waiting for ``100 Continue``.

CONTINUE_WAIT_SECONDS = 0.5
"""How long a client that sent ``Expect: 100-continue`` waits before sending anyway."""
MAX_PAUSES_SECONDS = 0.45
"""The most a body case pauses in all: well inside the sidecar's 1 s body timeout."""
_ZLIB_FAMILY = frozenset({"gzip", "deflate", "deflate-raw"})
"""Codings a lenient decoder may take for one another (zlib's auto-detection)."""

# fmt: off
_PAYLOADS = {"chat": 40, "stream": 12, "long": 15, "near-limit": 5, "over-limit": 6,
             "not-json": 8}
_CODINGS = {"identity": 14, "honest": 30, "lying": 10, "truncated": 8, "trailing": 3,
            "bomb": 8, "stacked": 6, "unknown": 7, "empty": 2}
_UNKNOWN_CODINGS = (b"compress", b"x-gzip", b"x-fuzz", b"identity", b"gzip;q=1", b"*",
                    b"aes128gcm", b"", b"chunked", b"deflate64", "gzïp".encode())
_BODY_FRAMINGS = {"content-length": 50, "chunked": 15, "chunk-extensions": 8, "trailers": 8,
                  "bad-chunk-extensions": 8, "bad-trailers": 8}
_EXTENSIONS = {
    "valid": (b";a=b", b';name="quoted; value"', b";x", b";a=1;b=2", b";" + b"k" * 200 + b"=v",
              b';a="\\"esc\\""'),
    "lenient": (b" ;a=b", b"; a = b", b";a=b c", b';a="open', b";=v", b";\xff",
                b";" + b"x" * 9000, b";a=" + b"v" * 70000),
    "invalid": (b";a=\x00", b";a\nX-Fuzz-Smuggled: 1", b";a\rb", b"\x00;a"),
}
_TRAILERS: dict[str, tuple[list[bytes], ...]] = {
    "valid": ([b"X-Trailer: 1"], [b"X-Fuzz-Smuggled: 1"], [b"X-A: 1", b"X-B: 2"],
              [b"Digest: sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE="]),
    "lenient": ([b"Content-Length: 5"], [b"Transfer-Encoding: chunked"], [b"Host: evil.example"],
                [b"Authorization: Bearer x"], [b"X-T-%d: 1" % i for i in range(200)],
                [b"X-A: 1", b" folded"], [b"X-A: " + b"v" * 70000], [b"X-A: \xff"],
                [b"X-A: 1\nX-B: 2"]),
    "invalid": ([b"X Bad: 1"], [b"NoColon"], [b"X-A: a\x00b"], [b"X-A: a\rb"], [b": no-name"],
                [b"X-Fuzz-Smuggled\r: 1"]),
}
_DELIVERIES = {"one-write": 40, "head-then-body": 20, "pieces": 25, "expect-continue": 10,
               "expect-other": 5}
_OTHER_EXPECTS = (b"200-ok", b"100-continue, 200-ok", b"garbage", b"100-continue=1")
# fmt: on


def _payload(rng: random.Random) -> tuple[str, bytes]:
    """A chat body (sometimes streaming, long, near or over the limit) or not JSON at all."""
    kind = rng.choices(list(_PAYLOADS), list(_PAYLOADS.values()))[0]
    if kind == "not-json":
        return kind, rng.choice(_NOT_JSON[:4])
    chat: dict[str, object] = {"model": rng.choice(("gpt-test", "fake-model"))}
    text = "hi"
    if kind == "stream":
        chat["stream"] = True
        options = rng.choice((None, {"include_usage": True}, {"include_usage": False}))
        if options is not None:
            chat["stream_options"] = options
    elif kind != "chat":
        if kind == "long":
            size = rng.randint(2_000, 60_000)
        elif kind == "near-limit":
            size = MAX_BODY_BYTES - 4096
        else:
            size = MAX_BODY_BYTES + rng.randint(1, 65536)
        # Words deflate hundreds of times over (a small body decoding past the limit);
        # hex of random bytes only to about half.
        text = ("lorem ipsum " * (size // 12 + 1))[:size]
        if rng.random() < 0.5:
            text = rng.randbytes(size // 2 + 1).hex()[:size]
    chat["messages"] = [{"role": "user", "content": text}]
    return kind, json.dumps(chat).encode()


def _other_coding(rng: random.Random, name: str) -> str:
    family = _ZLIB_FAMILY if name in _ZLIB_FAMILY else {name}
    return rng.choice([other for other in ENCODERS if other not in family])


def _coding(rng: random.Random, payload: bytes) -> tuple[str, list[bytes], bytes, str, str]:
    """(kind, Content-Encoding values, body, how it reads, the coding that decides that).

    ``how``: ``plain``, ``honest``, ``broken`` (not in its coding), ``bomb`` or ``either``
    (the sidecar may decode it or not: stacked, unknown, trailing bytes, empty).
    """
    kind = rng.choices(list(_CODINGS), list(_CODINGS.values()))[0]
    name = rng.choice(list(ENCODERS))
    token = header_name(name)
    encoded = ENCODERS[name](payload)
    if kind == "identity":
        return kind, [], payload, "plain", ""
    if kind == "honest":
        spelled = rng.choices((token, token.upper(), b" " + token + b" "), (8, 1, 1))[0]
        return kind, [spelled], encoded, "honest", token.decode()
    if kind == "lying":
        body = rng.choice(
            (payload, b"\x1f\x8b" + rng.randbytes(30), ENCODERS[_other_coding(rng, name)](payload))
        )
        return kind, [token], body, "broken", token.decode()
    if kind == "truncated":
        cut = rng.choice((len(encoded) // 2, len(encoded) - rng.randint(1, 8)))
        return kind, [token], encoded[: max(cut, 1)], "broken", token.decode()
    if kind == "bomb":
        name = rng.choice(("gzip", "deflate", "deflate-raw", "zstd"))
        body = bomb(name, rng.choice((16, 128, 1024)))
        return kind, [header_name(name)], body, "bomb", header_name(name).decode()
    if kind == "trailing":
        return kind, [token], encoded + rng.choice((b"\x00", b"\r\n", b"garbage")), "either", ""
    if kind == "unknown":
        body = rng.choice((payload, gzip_encode(payload)))
        return kind, [rng.choice(_UNKNOWN_CODINGS)], body, "either", ""
    if kind == "empty":
        return kind, [rng.choice((b"gzip", b"br", b"zstd"))], b"", "either", ""
    zipped = gzip_encode(payload)
    body, values = rng.choice(
        (
            (gzip_encode(zipped), [b"gzip, gzip"]),
            (gzip_encode(zipped), [b"gzip", b"gzip"]),  # two lines, one list
            (zipped, [b"gzip, gzip"]),
            (gzip_encode(ENCODERS["deflate"](payload)), [b"deflate, gzip"]),
            (zipped, [b"identity, gzip"]),
            (ENCODERS["zstd"](zipped), [b"gzip, zstd"]),
        )
    )
    return kind, values, body, "either", ""


def _chunked_with(
    rng: random.Random, body: bytes, extension: bytes, trailers: list[bytes], spelled: bool
) -> bytes:
    """Chunks of one drawn size; ``extension`` on one chunk line (maybe the last one)."""
    size = max(rng.choice((1, 7, 100, 1000, 8192)), len(body) // 256 + 1)
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    where = rng.randint(0, len(chunks))  # len(chunks): on the last-chunk line
    hex_format = rng.choice((b"%X", b"000%x")) if spelled else b"%x"
    lines = [
        hex_format % len(chunk) + (extension if i == where else b"") + b"\r\n" + chunk + b"\r\n"
        for i, chunk in enumerate(chunks)
    ]
    last = b"0" + (extension if where == len(chunks) else b"") + b"\r\n"
    return b"".join(lines) + last + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"


def _body_framing(rng: random.Random, valid_only: bool) -> tuple[str, Framing, str]:
    """(kind, framing, whether it is ``valid``, ``lenient`` (may be refused) or ``invalid``)."""
    kinds = list(_BODY_FRAMINGS)[:4] if valid_only else list(_BODY_FRAMINGS)
    kind = rng.choices(kinds, [_BODY_FRAMINGS[k] for k in kinds])[0]
    if kind == "content-length":
        return kind, _content_length, "valid"
    validity = "valid"
    if kind.startswith("bad-"):
        validity = rng.choice(("lenient", "invalid"))
    extension, trailers = b"", []
    if kind.endswith("extensions"):
        extension = rng.choice(_EXTENSIONS[validity])
    elif kind.endswith("trailers"):
        trailers = rng.choice(_TRAILERS[validity])
    spelled = kind == "chunked" and rng.random() < 0.3
    chunked = b"Transfer-Encoding: chunked"
    chunk_rng = random.Random(rng.getrandbits(32))  # the chunking draws stay inside the framing

    def framing(body: bytes) -> tuple[list[bytes], bytes, bool]:
        return [chunked], _chunked_with(chunk_rng, body, extension, trailers, spelled), False

    return kind, framing, validity


def _splits(
    rng: random.Random, kind: str, head_end: int, end: int
) -> tuple[tuple[int, float], ...]:
    """Where the wire is cut and how long the client waits there (``Case.splits``)."""
    if kind == "expect-continue":
        return ((head_end, -CONTINUE_WAIT_SECONDS),)
    if kind == "head-then-body" or (kind == "pieces" and end - head_end < 3):
        return ((head_end, round(rng.uniform(0.02, 0.15), 3)),)
    if kind != "pieces":
        return ()
    # Fractions, not randint over the lengths: the draws must not depend on the keys' length.
    body = end - head_end - 1
    offsets = {head_end + 1 + int(rng.random() * body) for _ in range(rng.randint(2, 6))}
    if rng.random() < 0.2:
        offsets.add(1 + int(rng.random() * head_end))  # one cut inside the head too
    pause = MAX_PAUSES_SECONDS / len(offsets)
    return tuple((at, round(rng.uniform(0.005, pause), 3)) for at in sorted(offsets))


def _body_expect(how: str, readable: bool, payload_kind: str, json_typed: bool) -> Expect:
    """What a valid key gets for a body, before framing and size are considered."""
    if how == "either" or not readable:
        return EITHER
    if not json_typed:  # the sidecar need not read it (it may, bounded): the upstream judges it
        if how == "broken" or payload_kind == "over-limit":
            return Expect(True, ANY_4XX if how == "broken" else frozenset({413}))
        return RELAYED
    if how == "bomb":
        return _own(413)
    if how == "broken":
        return REFUSED
    return {"over-limit": _own(413), "not-json": _own(400)}.get(payload_kind, RELAYED)


def _body_case(rng: random.Random, keys: Keys, index: int, decodable: frozenset[str]) -> Case:
    d = Draft(correlation=[b"X-Correlation-ID: fuzz-b%d" % index], headers=[b"Connection: close"])
    valid = rng.random() < 0.88
    bad_keys: tuple[list[bytes], ...] = (
        [],
        [b"Authorization: Bearer garbage"],
        [b"Authorization: Bearer " + keys.disabled],
    )
    d.auth = [b"Authorization: Bearer " + keys.valid] if valid else rng.choice(bad_keys)
    d.target = rng.choices(
        (
            b"/openai/v1/chat/completions",
            b"/groq/openai/v1/chat/completions",
            b"/v1/chat/completions",
        ),
        (14, 3, 3),
    )[0]
    delivery = rng.choices(list(_DELIVERIES), list(_DELIVERIES.values()))[0]
    payload_kind, payload = _payload(rng)
    coding, values, d.body, how, decider = _coding(rng, payload)
    if delivery == "expect-other":  # a body that would be relayed: only the Expect is odd
        payload_kind, payload = "chat", b'{"model":"gpt-test","messages":[]}'
        coding, values, d.body, how, decider = "identity", [], payload, "plain", ""
    json_typed = how == "bomb" or rng.random() < 0.9
    if not json_typed:
        d.content_type = b"text/plain"
    elif rng.random() < 0.2:
        d.content_type = b"application/json; charset=utf-8"
    d.headers += [b"Content-Encoding: " + value for value in values]
    framing_kind, d.framing, validity = _body_framing(rng, delivery == "expect-other")
    if delivery == "expect-continue":
        d.headers.append(rng.choice((b"Expect: 100-continue", b"Expect: 100-Continue")))
    elif delivery == "expect-other":
        d.headers.append(b"Expect: " + rng.choice(_OTHER_EXPECTS))
    if framing_kind == "trailers" and rng.random() < 0.5:
        d.headers.append(b"Trailer: X-Trailer")
    wire, _ = d.wire()
    head_end = wire.index(b"\r\n\r\n") + 4
    readable = how == "plain" or decider in decodable
    expect = _body_expect(how, readable, payload_kind, json_typed)
    if len(d.body) > MAX_BODY_BYTES:  # over the limit before any decoding
        expect = Expect(False, expect.own | {413})
    if validity != "valid":
        expect = Expect(expect.relay and validity == "lenient", expect.own | {400})
    if delivery == "expect-other":
        expect = _own(417)
    if not valid:
        expect = _own(400, 401)
    labels = (
        f"auth:{'valid' if valid else 'bad'}",
        f"payload:{payload_kind}",
        f"coding:{coding}" + (f":{decider}" if decider else ""),
        f"framing:{framing_kind}" + ("" if validity == "valid" else f":{validity}"),
        f"delivery:{delivery}",
    )
    return Case(
        index,
        labels,
        d.method,
        wire,
        False,
        body=d.body,
        content_encoding=", ".join(v.decode(errors="surrogateescape").strip() for v in values)
        or None,
        expect=expect,
        splits=_splits(rng, delivery, head_end, len(wire)),
        prefix="b",
    )


def generate_bodies(
    rng: random.Random, keys: Keys, count: int, decodable: frozenset[str]
) -> list[Case]:
    """``count`` body cases: their bytes a pure function of ``rng``'s seed and the keys.

    ``decodable`` (the codings the sidecar can decode) changes only what is expected.
    """
    return [_body_case(rng, keys, index, decodable) for index in range(count)]
