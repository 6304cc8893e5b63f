"""A scripted raw-TCP upstream: each accepted connection plays one script of steps.

An HTTP server (even aiohttp's fake) cannot misbehave on cue: it frames its own
answers, so it never sends a duplicated ``Content-Length``, bytes after a complete
response or a head of 200,000 fields, and it never closes at an exact point. This one
writes what the test says, byte for byte::

    scripts = [
        [READ, Write(OK_KEEP_ALIVE), READ, CLOSE],  # first connection
        [READ, Write(OK_KEEP_ALIVE)],               # second connection
    ]
    async with ScriptedUpstream(scripts) as upstream:
        ...  # point a client at upstream.origin; then read upstream.requests

Connection *n* plays ``scripts[n]``; connections past the last script are closed at
once. After its script, a connection waits for the client to close it (``hold``), so
whether the client reuses or drops a connection is the client's decision. It runs in
the test's own event loop, on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType


@dataclass(frozen=True)
class Read:
    """Read one whole request (head, then a ``Content-Length`` body) and record it."""


@dataclass(frozen=True)
class Write:
    """Write these bytes and wait until the kernel took them."""

    data: bytes


@dataclass(frozen=True)
class Flood:
    """Write ``data`` ``times`` times, a batch at a time, so the test never holds it all."""

    data: bytes
    times: int


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Close:
    """Close cleanly: a FIN, as a server ending a keep-alive or a close-delimited body."""


@dataclass(frozen=True)
class Reset:
    """Abort with a TCP RST (``SO_LINGER`` 0), as a crashing server or a middlebox."""


Step = Read | Write | Flood | Pause | Close | Reset
READ, CLOSE, RESET = Read(), Close(), Reset()
FLOOD_BATCH = 4096


@dataclass
class Served:
    """What one connection saw: the requests it read and how much it wrote."""

    requests: list[bytes] = field(default_factory=list)
    written: int = 0
    client_closed: bool = False


class ScriptedUpstream:
    """The server; ``origin`` is its URL, ``served`` one record per accepted connection."""

    def __init__(
        self,
        scripts: Sequence[Sequence[Step]],
        *,
        hold: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.scripts = [list(script) for script in scripts]
        self.hold = hold
        self.host, self.port = host, port
        self.served: list[Served] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.origin = ""

    @property
    def requests(self) -> list[bytes]:
        """Every request read, in connection order."""
        return [request for served in self.served for request in served.requests]

    async def __aenter__(self) -> ScriptedUpstream:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        literal = f"[{self.host}]" if ":" in self.host else self.host
        self.origin = f"http://{literal}:{self.port}"
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.served)
        served = Served()
        self.served.append(served)
        script: list[Step] = self.scripts[index] if index < len(self.scripts) else [CLOSE]
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._play(script, reader, writer, served)
        except (ConnectionError, asyncio.IncompleteReadError):
            served.client_closed = True
        except asyncio.CancelledError:
            pass  # the test is over (``__aexit__``); asyncio's stream callback must not see it
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _play(
        self,
        script: list[Step],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        served: Served,
    ) -> None:
        for step in script:
            if isinstance(step, Read):
                served.requests.append(await _read_request(reader))
            elif isinstance(step, Write):
                writer.write(step.data)
                served.written += len(step.data)
                await writer.drain()
            elif isinstance(step, Flood):
                batch = step.data * FLOOD_BATCH
                for _ in range(step.times // FLOOD_BATCH):
                    writer.write(batch)
                    served.written += len(batch)
                    await writer.drain()
                rest = step.data * (step.times % FLOOD_BATCH)
                writer.write(rest)
                served.written += len(rest)
                await writer.drain()
            elif isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
            elif isinstance(step, Close):
                writer.close()
                return
            else:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
        if self.hold:  # the client decides when this connection ends
            while await reader.read(65536):
                pass
        served.client_closed = True


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def response(
    status: int = 200,
    body: bytes = b"ok",
    *headers: str,
    version: str = "1.1",
    length: bool = True,
) -> bytes:
    """A response's bytes: status line, ``headers`` as given, ``Content-Length`` unless told."""
    lines = [f"HTTP/{version} {status} X", *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
