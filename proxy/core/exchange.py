"""The record of one proxied request, filled in as it goes and observed once at the end."""

from __future__ import annotations

from proxy.core.errors import AuthenticationFailed, ProxyError, QuotaExceeded, RateLimited

STATUS_CLIENT_CLOSED = 499
"""nginx's convention for a client that went away before the response ended."""


class Exchange:
    """Mutable, slotted: one per request, read by metrics, the access log and spans."""

    __slots__ = (
        "attempt_log",
        "attempts",
        "auth_failure",
        "budget_exceeded",
        "correlation_id",
        "cost_usd",
        "endpoint",
        "inflight_upstream",
        "input_tokens",
        "kind",
        "method",
        "model",
        "output_tokens",
        "path",
        "rate_limited",
        "response_id",
        "response_model",
        "retries",
        "retry_budget_exhausted",
        "span",
        "span_id",
        "started",
        "status",
        "stream",
        "tenant",
        "trace_id",
        "ttfb",
        "unpriced",
        "upstream",
        "upstream_started",
        "usage_added",
        "user",
    )

    def __init__(self, correlation_id: str, method: str, path: str, started: float) -> None:
        self.correlation_id = correlation_id
        self.method = method
        self.path = path
        self.started = started
        self.status = 0
        self.upstream: str | None = None
        self.kind = "openai"
        """The upstream's provider kind (``openai``, ``azure``, ``anthropic``)."""
        self.tenant: str | None = None
        self.user: str | None = None
        self.model: str | None = None
        self.stream = False
        self.ttfb: float | None = None
        """Seconds from ``started`` to the upstream's response head."""
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.response_model: str | None = None
        self.response_id: str | None = None
        self.trace_id: str | None = None
        self.span_id: str | None = None
        """The sidecar's server span (16 hex), set by the tracer with ``trace_id``."""
        self.span: object | None = None
        """The tracing adapter's span handle, opaque to the core."""
        self.upstream_started = False
        self.inflight_upstream: str | None = None
        """The upstream label the in-flight gauge was raised under (set by the observer)."""
        self.usage_added = False
        """The sidecar asked the upstream for stream usage the caller did not ask for."""
        self.rate_limited: str | None = None
        """``"requests"`` or ``"tokens"`` when the tenant's bucket rejected the request."""
        self.auth_failure: str | None = None
        """Bounded reason label when authentication failed."""
        self.attempts = 0
        """Upstream attempts made (1 unless retried)."""
        self.endpoint: str | None = None
        """The endpoint of the last attempt (the one that served, when one did)."""
        self.attempt_log: list[tuple[str, str, str]] = []
        """``(upstream, endpoint, outcome)`` of every attempt, in order."""
        self.retries: list[tuple[str, str]] = []
        """``(upstream, reason)`` of every retry."""
        self.retry_budget_exhausted: str | None = None
        """The upstream whose retry budget refused a retry of this request."""
        self.cost_usd: float | None = None
        """What the response cost (``None``: unknown, or nothing was charged)."""
        self.unpriced = False
        """The response stated usage, but its model has no price: its cost is unknown."""
        self.budget_exceeded = False
        """A tenant or user budget refused the request (429 ``insufficient_quota``)."""

    def record_error(self, error: ProxyError) -> None:
        """The sidecar answered (or cut the stream) with ``error``: what the log and metrics say."""
        self.status = error.status
        if isinstance(error, AuthenticationFailed):
            self.auth_failure = error.reason
        elif isinstance(error, RateLimited):
            self.rate_limited = error.limit
        elif isinstance(error, QuotaExceeded):
            self.budget_exceeded = True
