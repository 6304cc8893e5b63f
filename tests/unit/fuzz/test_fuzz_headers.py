"""Header filtering both ways over random header lists: what must never cross, and what must.

Names are HTTP tokens in random case (aiohttp's parser lets nothing else through), so
"case-insensitive" here means ASCII case, as in RFC 9110.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.headers import request_headers_for_upstream, response_headers_for_caller
from tests.unit.fuzz.budget import fuzz

Pairs = list[tuple[str, str]]
Filter = Callable[[Iterable[tuple[str, str]]], Pairs]

# RFC 9110 7.6.1 plus the obsolete ones proxies still meet (Keep-Alive, Proxy-Connection).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# What proxy/core/headers.py documents the sidecar sets itself (or must never leak upstream).
NEVER_UPSTREAM = HOP_BY_HOP | {
    "authorization",
    "host",
    "content-length",
    "expect",
    "x-correlation-id",
    "traceparent",
    "tracestate",
    "api-key",
    "x-api-key",
}
NEVER_TO_CALLER = HOP_BY_HOP | {"content-length", "x-correlation-id"}
ORDINARY = [
    "content-type",
    "accept",
    "user-agent",
    "openai-organization",
    "x-request-id",
    "x-ratelimit-remaining-tokens",
    "cookie",
    "set-cookie",
    "baggage",
    "x-stainless-os",
]
TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _cased(name: str, mask: int) -> str:
    """``name`` with the letters whose bit is set in ``mask`` upper-cased."""
    return "".join(c.upper() if mask >> i & 1 else c for i, c in enumerate(name))


def _random_case(choices: list[str]) -> st.SearchStrategy[str]:
    return st.builds(_cased, st.sampled_from(choices), st.integers(0, (1 << 20) - 1))


known_names = _random_case(sorted(NEVER_UPSTREAM | set(ORDINARY)))
names = known_names | st.text(TCHAR, min_size=1, max_size=12)
# Connection lists tokens with optional whitespace and empty elements (RFC 9110 5.6.1).
connection_values = st.lists(
    st.tuples(st.sampled_from(["", " ", "\t", "  "]), names, st.sampled_from(["", " ", "\t"])).map(
        "".join
    )
    | st.sampled_from(["", " ", "close", "keep-alive", "Upgrade"]),
    max_size=5,
).map(",".join)
values = st.text(max_size=20)
header_lists = st.lists(
    st.tuples(names, values) | st.tuples(_random_case(["connection"]), connection_values),
    max_size=14,
)


def _expected(pairs: Pairs, never: frozenset[str]) -> Pairs:
    """The reference: drop the never-set and every name any Connection header lists."""
    named = {
        token.strip(" \t").lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [(n, v) for n, v in pairs if n.lower() not in never and n.lower() not in named]


def _check(filtered: Filter, never: frozenset[str], pairs: Pairs) -> None:
    out = filtered(pairs)
    connection = ",".join(v for n, v in pairs if n.lower() == "connection")
    named = {token.strip(" \t").lower() for token in connection.split(",")}
    for name, _ in out:
        assert name.lower() not in never, name
        assert name.lower() not in named, name
    # Exactly the reference list: a subsequence of the input, order and duplicates kept,
    # names untouched (their case is the caller's), and nothing else dropped.
    assert out == _expected(pairs, never)
    # Lazily produced input (aiohttp passes a view) gives the same answer.
    assert filtered(iter(pairs)) == out
    # Filtering again changes nothing: no Connection header is left to name anything.
    assert filtered(out) == out


@fuzz(200)
@given(header_lists)
def test_request_headers_for_upstream(pairs: Pairs) -> None:
    """Upstream never sees hop-by-hop, Connection-named, credentials or what the sidecar sets."""
    _check(request_headers_for_upstream, NEVER_UPSTREAM, pairs)


@fuzz(200)
@given(header_lists)
def test_response_headers_for_caller(pairs: Pairs) -> None:
    """The caller never sees hop-by-hop, Connection-named or framing headers; the rest passes."""
    _check(response_headers_for_caller, NEVER_TO_CALLER, pairs)


@fuzz(120)
@given(header_lists, _random_case(sorted(NEVER_UPSTREAM)), values)
def test_a_credential_in_any_case_and_position_never_goes_upstream(
    pairs: Pairs, name: str, value: str
) -> None:
    """Authorization and friends are dropped however they are spelled and wherever they sit."""
    for at in (0, len(pairs) // 2, len(pairs)):
        mixed = [*pairs[:at], (name, value), *pairs[at:]]
        assert all(n.lower() != name.lower() for n, _ in request_headers_for_upstream(mixed))
