"""A raw-socket HTTP/1.1 client for malformed requests, and how their outcomes are told apart.

``send`` writes a case's bytes as they are on a fresh connection (in pieces with pauses,
or waiting for ``100 Continue``, as the case says) while it reads one response by hand,
so whatever comes back (or does not) is recorded rather than raised: an ``Outcome`` says
whether a whole answer arrived and, once classified, who made it and whether that is
what the case expected.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from contextlib import suppress
from dataclasses import dataclass, field

from tests.support.malformed import Case, Expect

_STATUS_LINE = re.compile(rb"HTTP/\d\.\d (\d{3})(?: [^\r\n]*)?")


class NoAnswer(Exception):
    """The connection ended before a status line."""


class CutShort(Exception):
    """The connection ended inside a response."""


class Garbled(Exception):
    """What came back is not an HTTP/1.x response."""


@dataclass(repr=False)
class Outcome:
    case: Case
    kind: str = "answered"
    """``answered``, ``awaiting-body`` (no answer in time to an incomplete body),
    ``timeout``, ``no-answer``, ``cut-short`` or ``garbled``."""
    seconds: float = 0.0
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    head: bytes = b""
    body: bytes = b""
    origin: str = ""
    """``upstream`` (relayed: the upstream got a request with this answer's correlation id),
    ``sidecar`` (its own error, in the OpenAI shape) or ``aiohttp`` (the framework's own
    plain-text answer: the HTTP parser's 400, the router's 404, the Expect handler's 417)."""
    continued: bool = False
    """A ``100 Continue`` came before the answer."""

    def classify(self, relayed_ids: set[str]) -> None:
        correlation_id = self.headers.get("x-correlation-id")
        if correlation_id is not None and correlation_id in relayed_ids:
            self.origin = "upstream"
        elif _is_openai_error(self.body) or (
            self.case.method == b"HEAD" and self.headers.get("content-type") == "application/json"
        ):
            self.origin = "sidecar"
        else:
            self.origin = "aiohttp"

    @property
    def relayed(self) -> bool:
        return self.kind == "answered" and self.origin == "upstream"

    def unexpected(self) -> str | None:
        """Why this answer is not one ``case.expect`` allows (``None``: it is, or none is set)."""
        expect: Expect | None = self.case.expect
        if expect is None or self.kind != "answered":
            return None
        if self.relayed:
            # (No 100 Continue is no fault: a server that already has the body may skip it.)
            return None if expect.relay else f"relayed, expected {expect}"
        if self.origin != "sidecar" or self.status not in expect.own:
            return f"{self.label}, expected {expect}"
        return None

    @property
    def label(self) -> str:
        return f"{self.status} {self.origin}" if self.kind == "answered" else self.kind

    def __str__(self) -> str:
        answer = (self.head + self.body)[:300]
        return f"{self.label} after {self.seconds:.2f} s <- {self.case}\n    -> {answer!r}"

    __repr__ = __str__


def _is_openai_error(body: bytes) -> bool:
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += (await reader.readexactly(size + 2))[:-2]
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
        pass
    return bytes(body)


async def _read_response(
    reader: asyncio.StreamReader, outcome: Outcome, heard: asyncio.Event
) -> None:
    while outcome.status < 200:  # interim answers (100 Continue) precede the real one
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise NoAnswer from exc
        except asyncio.LimitOverrunError as exc:
            raise Garbled from exc
        outcome.head += head
        status_line, *lines = head[:-4].split(b"\r\n")
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            raise Garbled
        outcome.status = int(match[1])
        outcome.continued |= outcome.status == 100
        heard.set()
    for line in lines:
        name, _, value = line.partition(b":")
        outcome.headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    try:
        if outcome.case.method == b"HEAD" or outcome.status in (204, 304):
            return
        if "chunked" in outcome.headers.get("transfer-encoding", "").lower():
            outcome.body = await _read_chunked(reader)
        elif "content-length" in outcome.headers:
            outcome.body = await reader.readexactly(int(outcome.headers["content-length"]))
        else:
            outcome.body = await reader.read()
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise CutShort from exc
    except (ValueError, asyncio.LimitOverrunError) as exc:
        raise Garbled from exc


async def _deliver(writer: asyncio.StreamWriter, outcome: Outcome, heard: asyncio.Event) -> None:
    """Write the case's wire piece by piece (``Case.splits``); stop once it is answered."""
    case = outcome.case
    offsets = [0, *(at for at, _ in case.splits), len(case.wire)]
    pauses = [0.0, *(pause for _, pause in case.splits)]
    for start, end, pause in zip(offsets, offsets[1:], pauses, strict=False):
        if pause < 0:  # as curl does: send anyway if no 100 Continue comes in time
            with suppress(TimeoutError):
                async with asyncio.timeout(-pause):
                    await heard.wait()
        elif pause:
            await asyncio.sleep(pause)
        if outcome.status >= 200 or writer.is_closing():
            return
        writer.write(case.wire[start:end])
        with suppress(ConnectionError):  # the sidecar may answer (and close) before reading
            await writer.drain()


async def send(port: int, case: Case, *, within_seconds: float) -> Outcome:
    """Write ``case`` on a fresh connection; read one response within ``within_seconds``."""
    outcome = Outcome(case)
    started = time.monotonic()
    writer = None
    delivery: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(within_seconds):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            heard = asyncio.Event()
            delivery = asyncio.create_task(_deliver(writer, outcome, heard))
            try:
                await _read_response(reader, outcome, heard)
            except ConnectionError as exc:
                raise (CutShort if outcome.status else NoAnswer) from exc
    except TimeoutError:
        waiting = case.incomplete_body and not outcome.status
        outcome.kind = "awaiting-body" if waiting else "timeout"
    except NoAnswer:
        outcome.kind = "no-answer"
    except CutShort:
        outcome.kind = "cut-short"
    except Garbled:
        outcome.kind = "garbled"
    finally:
        if delivery is not None:
            delivery.cancel()
            with suppress(asyncio.CancelledError, ConnectionError):
                await delivery
        if writer is not None:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()
    outcome.seconds = time.monotonic() - started
    return outcome


async def send_all(
    port: int, cases: list[Case], *, concurrency: int, within_seconds: float
) -> list[Outcome]:
    """``send`` every case, ``concurrency`` connections at a time; outcomes in case order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(case: Case) -> Outcome:
        async with gate:
            return await send(port, case, within_seconds=within_seconds)

    return list(await asyncio.gather(*(one(case) for case in cases)))
