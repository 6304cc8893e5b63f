"""Run the same calls through the lean client and through aiohttp's ClientSession.

``tests/integration/test_upstream_differential.py`` runs every case against both and
compares what a caller can observe. An outcome is ``(status, fields, body)``, with the
header fields as raw bytes (names as sent, values as the client decoded them, encoded
back), or ``HEAD_ERROR`` / ``BODY_ERROR``: an error before the head (a 502/504 from the
sidecar) or inside the body (a cut stream), or ``HANGS``: no outcome within ``GUARD``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from proxy.adapters.upstream_http11 import Http11Transport
from proxy.core.errors import ProxyError
from tests.support.scripted_upstream import Step

READ_TIMEOUT = 0.3
HEAD_ERROR = "error before the head"
BODY_ERROR = "error in the body"
HANGS = "no outcome, no timeout either"
GUARD = 3.0
"""Seconds a call may take, far above every scripted pause and ``READ_TIMEOUT``."""
Fields = tuple[tuple[bytes, bytes], ...]
Outcome = tuple[int, Fields, bytes] | str
Observed = tuple[int, bytes] | str
"""An outcome without its header fields: what a case pins."""


@dataclass(frozen=True)
class Call:
    method: str = "GET"
    body: bytes = b""
    pause: float = 0.0
    """Seconds to wait before this call (so a close or stray bytes are seen first)."""
    together: int = 1
    """How many of this call run at once (to fill the pool with several connections)."""


@dataclass(frozen=True)
class Case:
    id: str
    scripts: Sequence[Sequence[Step]]
    calls: Sequence[Call]
    expected: Sequence[Observed]
    """Per call: ``(status, body)``, ``HEAD_ERROR`` or ``BODY_ERROR``."""
    requests: int
    """Requests the upstream read during the lean client's run (a replay shows here)."""
    differs: str = ""
    """Why the two clients differ here, if they do; then the two fields below say how."""
    reference: Sequence[Observed] | None = None
    """aiohttp's outcomes, where they are not the lean client's."""
    reference_requests: int | None = None
    """Requests the upstream read during aiohttp's run, where not ``requests``."""


def observed(outcome: Outcome) -> Observed:
    return outcome if isinstance(outcome, str) else (outcome[0], outcome[2])


async def run_lean(origin: str, calls: Sequence[Call]) -> list[Outcome]:
    transport = Http11Transport(
        {"up": origin}, connect_timeout=1.0, read_timeout=READ_TIMEOUT, max_connections=4
    )

    async def one(call: Call) -> Outcome:
        try:
            answer = await transport.send("up", call.method, origin + "/v1/x", [], call.body)
        except ProxyError:
            return HEAD_ERROR
        try:
            body = await answer.read()
        except ProxyError:
            return BODY_ERROR
        finally:
            answer.close()
        fields = tuple(
            (name.encode("latin-1"), value.encode("utf-8", "surrogateescape"))
            for name, value in answer.headers
        )
        return answer.status, fields, body

    try:
        return await _run(calls, one)
    finally:
        await transport.aclose()


async def run_reference(origin: str, calls: Sequence[Call]) -> list[Outcome]:
    """aiohttp as the sidecar used it before ADR 0002: no decompression, no redirects."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=1.0, sock_read=READ_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=4)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:

        async def one(call: Call) -> Outcome:
            try:
                answer = await session.request(
                    call.method, origin + "/v1/x", data=call.body or None, allow_redirects=False
                )
            except (aiohttp.ClientError, TimeoutError):
                return HEAD_ERROR
            try:
                body = await answer.read()
            except (aiohttp.ClientError, TimeoutError):
                return BODY_ERROR
            finally:
                answer.release()
            return answer.status, tuple(answer.raw_headers), body

        return await _run(calls, one)


async def _run(calls: Sequence[Call], one: Callable[[Call], Awaitable[Outcome]]) -> list[Outcome]:
    async def guarded(call: Call) -> Outcome:
        try:
            async with asyncio.timeout(GUARD):
                return await one(call)
        except TimeoutError:
            return HANGS

    outcomes: list[Outcome] = []
    for call in calls:
        await asyncio.sleep(call.pause)
        outcomes += await asyncio.gather(*(guarded(call) for _ in range(call.together)))
    return outcomes
