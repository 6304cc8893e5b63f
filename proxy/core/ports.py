"""The ports of the proxy hexagon: what the core needs from the outside world.

Adapters in ``proxy.adapters`` (and the ``auth`` package, wired in the
composition root) implement these structurally; nothing here imports a framework.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.core.body_budget import BodyHold
    from proxy.core.exchange import Exchange

Clock = Callable[[], float]
"""Monotonic seconds; ``time.monotonic`` in production, a fake in tests."""

Headers = list[tuple[str, str]]

Body = bytes | bytearray
"""A request body: a large one is read into one preallocated ``bytearray``, not copied again."""


class Caller(Protocol):
    """Who is calling, as the authenticator established it."""

    @property
    def tenant(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def rpm(self) -> int | None: ...
    @property
    def tpm(self) -> int | None: ...
    @property
    def burst(self) -> int | None: ...
    @property
    def allowed_upstreams(self) -> frozenset[str] | None:
        """``None`` means every upstream."""
        ...

    @property
    def tenant_budget_usd(self) -> float | None:
        """USD the tenant may spend per window; ``None``: unlimited."""
        ...

    @property
    def user_budget_usd(self) -> float | None: ...
    @property
    def budget_window(self) -> str:
        """``"day"`` or ``"month"`` (UTC calendar windows)."""
        ...


class Authenticator(Protocol):
    async def authenticate(self, authorization: str | None) -> Caller:
        """Resolve an ``Authorization`` header value to a caller.

        Raises ``AuthenticationFailed`` (401) or ``ServiceUnavailable`` (503,
        repository unreachable).
        """
        ...


class Reservation(Protocol):
    """Tokens debited at admission, to be corrected when the response ends."""

    def settle(self, actual_tokens: int) -> None:
        """Correct the debit to the upstream's reported usage."""
        ...

    def refund(self) -> None:
        """Return the whole debit (upstream error, timeout, client gone)."""
        ...


class RateLimiter(Protocol):
    async def admit(self, caller: Caller, estimated_tokens: int) -> Reservation:
        """Charge one request and reserve ``estimated_tokens``; raises ``RateLimited``."""
        ...

    async def aclose(self) -> None:
        """Release what the limiter holds (connections); called once, at shutdown."""
        ...


class InboundRequest(Protocol):
    """The caller's request as the server entrypoint received it."""

    method: str
    path: str
    """Path and query exactly as received (still percent-encoded)."""
    headers: Iterable[tuple[str, str]]
    authorization: str | None
    content_type: str
    content_encoding: str
    """As received (``""`` when absent); the body is never decoded by the entrypoint."""

    async def read_body(self, limit: int, hold: BodyHold) -> Body:
        """The whole body as received, its bytes taken from ``hold`` as they arrive.

        Raises ``PayloadTooLarge`` past ``limit`` bytes, ``ServiceUnavailable`` when the
        body budget is spent, ``BadRequest`` when the body's framing is broken,
        ``RequestTimeout`` when it is too slow, ``ExpectationFailed`` for an unknown
        ``Expect``.
        """
        ...


class UpstreamResponse(Protocol):
    status: int
    headers: Headers
    content_length: int | None
    content_type: str
    content_encoding: str
    verbatim_head: bool
    """A header holds bytes that are not UTF-8: the sink must write them back as they came."""

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive from the network."""
        ...

    async def read(self) -> bytes:
        """The whole body (only used when ``content_length`` is small and known)."""
        ...

    def close(self) -> None: ...


class UpstreamTransport(Protocol):
    async def send(
        self,
        upstream: str,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: Body,
    ) -> UpstreamResponse:
        """Send a request to the named upstream; return once the response head arrived.

        Raises ``BadGateway`` or ``GatewayTimeout``; never a library error.
        """
        ...

    async def aclose(self) -> None: ...


class Observer(Protocol):
    """Telemetry hook: metrics, the access log line, span attributes."""

    def upstream_started(self, exchange: Exchange) -> None: ...
    def first_byte(self, exchange: Exchange) -> None: ...
    def request_finished(self, exchange: Exchange) -> None: ...


class ResponseSink(Protocol):
    """Where the core writes the response; the server entrypoint implements it.

    Every method raises ``ClientDisconnected`` when the caller is gone.
    """

    async def start(self, status: int, headers: Headers, *, verbatim: bool = False) -> None: ...
    async def write(self, chunk: bytes) -> None: ...
    async def finish(self) -> None: ...
    async def send_whole(
        self, status: int, headers: Headers, body: bytes, *, verbatim: bool = False
    ) -> None: ...


class RequestTracer(Protocol):
    """A server span per request and a client span per upstream call."""

    def start(self, exchange: Exchange, headers: Mapping[str, str]) -> object:
        """Open the request's span, continuing the caller's trace."""
        ...

    def upstream_call(self, exchange: Exchange, method: str, url: str, headers: Headers) -> None:
        """Open the client span of the upstream call; add its propagation headers."""
        ...

    def finish(self, exchange: Exchange, handle: object) -> None:
        """Record the outcome on the spans and end them."""
        ...

    def shutdown(self, timeout_seconds: float = 2.0) -> None:
        """Flush what is queued for export, within ``timeout_seconds``; blocking I/O."""
        ...


class NoTracer:
    """``RequestTracer`` for ``OTEL_SDK_DISABLED=true``: costs one call each way."""

    __slots__ = ()

    def start(self, exchange: Exchange, headers: Mapping[str, str]) -> object:
        return None

    def upstream_call(self, exchange: Exchange, method: str, url: str, headers: Headers) -> None:
        return None

    def finish(self, exchange: Exchange, handle: object) -> None:
        return None

    def shutdown(self, timeout_seconds: float = 2.0) -> None:
        return None
