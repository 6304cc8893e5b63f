"""Which headers cross the sidecar, each way."""

from __future__ import annotations

from proxy.core.headers import request_headers_for_upstream, response_headers_for_caller


def test_request_drops_hop_by_hop_credentials_and_what_the_sidecar_sets() -> None:
    """Hop-by-hop, Authorization, Host, length, tracing and API-key headers stay behind."""
    sent = [
        ("Host", "evil.example"),
        ("Authorization", "Bearer caller-key"),
        ("x-api-key", "caller-key"),
        ("Content-Length", "2"),
        ("Transfer-Encoding", "chunked"),
        ("TE", "trailers"),
        ("Traceparent", "00-abc-def-01"),
        ("X-Correlation-ID", "c1"),
        ("OpenAI-Organization", "org-1"),
        ("Accept", "text/event-stream"),
    ]
    assert request_headers_for_upstream(sent) == [
        ("OpenAI-Organization", "org-1"),
        ("Accept", "text/event-stream"),
    ]


def test_headers_named_in_connection_are_dropped_too() -> None:
    """Whatever Connection names (any case, any spacing) is hop-by-hop for that message."""
    sent = [
        ("Connection", "keep-alive, X-Hop ,x-other"),
        ("X-Hop", "1"),
        ("X-OTHER", "2"),
        ("X-Kept", "3"),
    ]
    assert request_headers_for_upstream(sent) == [("X-Kept", "3")]


def test_response_keeps_upstream_rate_limit_headers_but_not_framing() -> None:
    """x-ratelimit-* and retry-after pass unchanged; length and chunking are re-framed."""
    received = [
        ("Content-Length", "712"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("x-ratelimit-remaining-requests", "0"),
        ("retry-after-ms", "10"),
        ("Content-Encoding", "gzip"),
    ]
    assert response_headers_for_caller(received) == [
        ("x-ratelimit-remaining-requests", "0"),
        ("retry-after-ms", "10"),
        ("Content-Encoding", "gzip"),
    ]
