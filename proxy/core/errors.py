"""Errors the sidecar itself answers with, rendered in the OpenAI error shape.

Every error the core raises on purpose derives from :class:`ProxyError`; the
entrypoint renders it as ``{"error": {"message", "type", "param", "code"}}``
with the status and extra headers it carries. Anything else escaping the core
is a bug and is rendered as a 500 by the proxy handler, never a crash::

    ProxyError
    ├── BadRequest            400  body unreadable where the sidecar must read it
    ├── AuthenticationFailed  401  missing, malformed, unknown, disabled key
    ├── PermissionDenied      403  tenant may not use this upstream
    ├── UnknownUpstream       404  no upstream by that name
    ├── RequestTimeout        408  body not received within the client timeout
    ├── PayloadTooLarge       413  body over the configured cap (as received or decoded)
    ├── UnsupportedMediaType  415  a Content-Encoding the sidecar cannot undo where it reads
    ├── ExpectationFailed     417  an ``Expect`` other than ``100-continue``
    ├── RateLimited           429  tenant bucket empty (carries rate-limit headers)
    ├── QuotaExceeded         429  tenant or user budget (USD) spent for its window
    ├── UpstreamFault              an upstream failed before answering (an attempt's outcome)
    │   ├── BadGateway        502  upstream unreachable, reset, or sent garbage
    │   └── GatewayTimeout    504  upstream silent past the connect or read timeout
    └── ServiceUnavailable    503  breaker open, overloaded, repository down, draining

:class:`ClientDisconnected` is not a ProxyError: nobody is left to answer.

Messages never contain secrets: they are shown to callers and logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.core.usage import Usage

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class ProxyError(Exception):
    """Base of every error the sidecar answers by itself."""

    status: int = 500
    error_type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers: Mapping[str, str] = headers if headers is not None else _NO_HEADERS


class BadRequest(ProxyError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(ProxyError):
    """401. ``reason`` is a short, bounded label for the auth-failure metric."""

    status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PermissionDenied(ProxyError):
    status = 403
    error_type = "permission_error"
    code = "upstream_not_allowed"


class UnknownUpstream(ProxyError):
    status = 404
    error_type = "invalid_request_error"
    code = "unknown_upstream"


class RequestTimeout(ProxyError):
    """408: the caller did not send its whole body in time (a stalled or trickling client)."""

    status = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(ProxyError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(ProxyError):
    status = 415
    error_type = "invalid_request_error"
    code = "unsupported_content_encoding"


class ExpectationFailed(ProxyError):
    status = 417
    error_type = "invalid_request_error"
    code = "expectation_failed"


class RateLimited(ProxyError):
    """429. ``limit`` is ``"requests"`` or ``"tokens"`` (metric label)."""

    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: str, headers: Mapping[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.limit = limit


class QuotaExceeded(ProxyError):
    """429 ``insufficient_quota``: retrying will not help until the window rolls over."""

    status = 429
    error_type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str, *, remaining_usd: float) -> None:
        super().__init__(
            message,
            headers={
                "x-should-retry": "false",
                BUDGET_REMAINING_HEADER: format_usd(remaining_usd),
            },
        )


BUDGET_REMAINING_HEADER = "x-llm-sidecar-budget-remaining-usd"


def format_usd(amount: float) -> str:
    """Dollars as the budget header shows them: six decimals (micro-dollars)."""
    return f"{amount:.6f}"


class UpstreamFault(ProxyError):
    """An upstream failed before answering. ``outcome`` is the attempt's metric label
    (``unreachable``, ``reset``, ``timeout``); ``sent`` is ``False`` only when the request
    provably never reached the upstream (a refused or timed-out connect), which is what
    makes re-sending a POST safe."""

    outcome = "reset"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        sent: bool = True,
        outcome: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.sent = sent
        if outcome is not None:
            self.outcome = outcome


class BadGateway(UpstreamFault):
    status = 502
    error_type = "server_error"
    code = "bad_gateway"


class ServiceUnavailable(ProxyError):
    status = 503
    error_type = "server_error"
    code = "service_unavailable"


class GatewayTimeout(UpstreamFault):
    status = 504
    error_type = "server_error"
    code = "upstream_timeout"
    outcome = "timeout"


class ClientDisconnected(Exception):
    """The caller went away before the response ended (logged as status 499).

    ``usage`` is what the upstream had reported by then, when the relay knows it;
    ``events_relayed`` how many SSE ``data:`` events of a successful stream had reached the
    caller (what a stream abandoned before its usage event is billed by).
    """

    usage: Usage | None = None
    events_relayed: int = 0
