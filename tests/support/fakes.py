"""In-memory stand-ins shared by the unit and integration tests.

The port fakes (``FakeAuthenticator`` to ``FakeRequest``) implement the Protocols of
``proxy.core.ports`` structurally, each only as far as the core tests need.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field

from auth.adapters.repo_memory import InMemoryUserRepository
from proxy.core.body_budget import BodyHold
from proxy.core.errors import ClientDisconnected
from proxy.core.exchange import Exchange
from proxy.core.ports import Body, Caller, Headers
from proxy.core.spend import SpendLedger
from proxy.entrypoints.spend_bridge import RepositorySpendBackend


@dataclass(slots=True, frozen=True)
class FakeCaller:
    """What the authenticator hands the core: a tenant, its user and its limits."""

    tenant: str = "acme"
    user: str = "alice"
    rpm: int | None = None
    tpm: int | None = None
    burst: int | None = None
    allowed_upstreams: frozenset[str] | None = None
    tenant_budget_usd: float | None = None
    user_budget_usd: float | None = None
    budget_window: str = "month"


class FakeClock:
    """A monotonic clock that moves only when the test says so (``advance``, or set ``now``)."""

    __slots__ = ("now",)

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def spend_ledger(**options: object) -> SpendLedger:
    """A real spend ledger over an in-memory user repository (``options`` go to the ledger)."""
    return SpendLedger(RepositorySpendBackend(InMemoryUserRepository()), **options)  # type: ignore[arg-type]


class FakeAuthenticator:
    """An ``Authenticator`` that takes any ``Authorization`` (or none) as one fixed caller."""

    def __init__(self, caller: FakeCaller) -> None:
        self.caller = caller

    async def authenticate(self, authorization: str | None) -> Caller:
        return self.caller


@dataclass
class FakeReservation:
    """A ``Reservation`` that remembers how it ended: ``settled`` tokens, or ``refunded``."""

    amount: int
    settled: int | None = None
    refunded: bool = False

    def settle(self, actual_tokens: int) -> None:
        self.settled = actual_tokens

    def refund(self) -> None:
        self.refunded = True


@dataclass
class FakeLimiter:
    """A ``RateLimiter`` that admits everything and keeps each reservation for the test."""

    reservations: list[FakeReservation] = field(default_factory=list)

    async def admit(self, caller: Caller, estimated_tokens: int) -> FakeReservation:
        self.reservations.append(FakeReservation(estimated_tokens))
        return self.reservations[-1]

    async def aclose(self) -> None:
        return None


@dataclass
class FakeResponse:
    """An ``UpstreamResponse`` whose head has arrived and whose body is already known.

    ``iter_chunks`` yields the body line by line (an SSE stream arrives in pieces);
    ``chunked`` hides its length, as a streamed reply's would be; ``close`` is recorded.
    """

    status: int
    body: bytes = b"{}"
    content_type: str = "application/json"
    content_encoding: str = ""
    chunked: bool = False
    headers: Headers = field(default_factory=list)
    closed: bool = False
    verbatim_head: bool = False
    content_length: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.content_length = None if self.chunked else len(self.body)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for line in self.body.splitlines(keepends=True):
            yield line

    async def read(self) -> bytes:
        return self.body

    def close(self) -> None:
        self.closed = True


Script = list[FakeResponse | Exception]
"""A key's answers, taken in turn (the last one repeats); an exception is raised."""


@dataclass
class FakeTransport:
    """An ``UpstreamTransport`` answering by key: the upstream's name, or the endpoint's key
    (``"up/0"``) as the dispatcher sends it. Records each ``(key, url, body)`` sent.

    A key maps to one answer, given on every send, or to a ``Script``; an exception
    answer is raised (``BadGateway``, ``GatewayTimeout``: what the port may raise).
    """

    answers: Mapping[str, FakeResponse | Exception | Script]
    sent: list[tuple[str, str, bytes]] = field(default_factory=list)

    async def send(
        self, upstream: str, method: str, url: str, headers: Iterable[tuple[str, str]], body: Body
    ) -> FakeResponse:
        self.sent.append((upstream, url, bytes(body)))
        answer = self.answers[upstream]
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def aclose(self) -> None:
        return None


class NullObserver:
    """An ``Observer`` that ignores every event."""

    def upstream_started(self, exchange: Exchange) -> None: ...
    def first_byte(self, exchange: Exchange) -> None: ...
    def request_finished(self, exchange: Exchange) -> None: ...


@dataclass
class FakeSink:
    """A ``ResponseSink`` that keeps what the core wrote.

    ``gone=True`` plays a caller that has left: writing a body raises ``ClientDisconnected``;
    ``gone_after=N`` one that leaves after N body writes.
    """

    gone: bool = False
    status: int = 0
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    gone_after: int | None = None

    async def start(self, status: int, headers: Headers, *, verbatim: bool = False) -> None:
        self.status, self.headers = status, headers

    async def write(self, chunk: bytes) -> None:
        if self.gone_after is not None:
            self.gone, self.gone_after = self.gone_after <= 0, self.gone_after - 1
        if self.gone:
            raise ClientDisconnected
        self.body += chunk

    async def finish(self) -> None: ...

    async def send_whole(
        self, status: int, headers: Headers, body: bytes, *, verbatim: bool = False
    ) -> None:
        if self.gone:
            raise ClientDisconnected
        self.status, self.headers, self.body = status, headers, body


@dataclass
class FakeRequest:
    """An ``InboundRequest`` whose whole body is already here (taken from the hold at once)."""

    body: bytes
    path: str = "/groq/openai/v1/chat/completions"
    method: str = "POST"
    headers: Iterable[tuple[str, str]] = ()
    authorization: str | None = "Bearer x"
    content_type: str = "application/json"
    content_encoding: str = ""

    async def read_body(self, limit: int, hold: BodyHold) -> bytes:
        hold.take(len(self.body))
        return self.body
