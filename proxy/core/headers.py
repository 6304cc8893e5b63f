"""Which headers cross the proxy, each way (RFC 9110 section 7.6.1 hop-by-hop rules)."""

from __future__ import annotations

from collections.abc import Iterable

from proxy.core.correlation import HEADER as CORRELATION_HEADER

_CORRELATION = CORRELATION_HEADER.lower()

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

# Never forwarded upstream: the sidecar sets these itself (Authorization is replaced by
# the provider key, Host comes from the upstream URL, the length from the body sent,
# tracing headers from the sidecar's own client span).
_NOT_FORWARDED_UPSTREAM = HOP_BY_HOP | {
    "authorization",
    "host",
    "content-length",
    "expect",  # the body goes upstream whole, with its length: nothing to wait for
    _CORRELATION,
    "traceparent",
    "tracestate",
    "api-key",
    "x-api-key",
}
# Never copied back: the server entrypoint frames the body itself.
_NOT_RETURNED = HOP_BY_HOP | {"content-length", _CORRELATION}


def _filter(pairs: Iterable[tuple[str, str]], dropped: frozenset[str]) -> list[tuple[str, str]]:
    kept = []
    connection = ""
    for name, value in pairs:
        lowered = name.lower()
        if lowered in dropped:
            if lowered == "connection":
                connection += "," + value
            continue
        kept.append((name, value))
    if connection:
        # Headers the sender named in Connection are hop-by-hop too (most clients only
        # name keep-alive or close, already dropped: then there is no second pass).
        named = {token.strip().lower() for token in connection.split(",")} - dropped
        named.discard("")
        if named:
            kept = [(name, value) for name, value in kept if name.lower() not in named]
    return kept


def request_headers_for_upstream(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The caller's headers minus hop-by-hop, credentials and what the sidecar sets."""
    return _filter(pairs, _NOT_FORWARDED_UPSTREAM)


def response_headers_for_caller(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's headers minus hop-by-hop and framing (its errors pass unchanged)."""
    return _filter(pairs, _NOT_RETURNED)


def with_defaults(headers: list[tuple[str, str]], defaults: Iterable[tuple[str, str]]) -> None:
    """Append each of ``defaults`` whose name is not among ``headers`` already."""
    present = {name.lower() for name, _ in headers}
    headers.extend((name, value) for name, value in defaults if name.lower() not in present)


def without_content_encoding(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers for a body the sidecar rewrote: it is sent as plain JSON (ADR 0080)."""
    return [(name, value) for name, value in headers if name.lower() != "content-encoding"]
