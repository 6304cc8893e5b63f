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


@dataclass(frozen=True)
class Case:
    index: int
    labels: tuple[str, ...]
    method: bytes
    wire: bytes
    incomplete_body: bool

    def __str__(self) -> str:
        return f"#{self.index} {' '.join(self.labels)}: {self.wire[:300]!r}"


def generate(rng: random.Random, keys: Keys, count: int) -> list[Case]:
    """``count`` cases: a pure function of the seed behind ``rng`` and the keys."""
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
        cases.append(Case(index, tuple(d.labels), d.method, wire, incomplete))
    return cases
