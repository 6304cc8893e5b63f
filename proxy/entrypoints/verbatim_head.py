"""Responses whose head goes out byte for byte, for the rare upstream header that is not UTF-8.

aiohttp serialises header values as UTF-8, and its C writer silently drops what cannot
be encoded: an upstream's ``X-Name: caf\\xe9`` reached the caller as ``X-Name: caf``. The
lean client keeps such bytes surrogate-escaped and flags the response; these classes
write that head themselves, turning the escapes back into the bytes they were. Only
flagged responses use them, so the usual head keeps aiohttp's fast writer.

This overrides ``StreamResponse._write_headers`` and sets the payload writer's buffered
head (``_headers_buf``): private aiohttp API, pinned by requirements.lock and by
``tests/e2e/test_proxy_behaviour.py`` (a non-UTF-8 header byte reaches the caller).
"""

from __future__ import annotations

import re
from typing import cast

from aiohttp import web
from aiohttp.http_writer import StreamWriter

# What aiohttp's serializer refuses in a head: control characters but TAB.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class _VerbatimHead(web.StreamResponse):
    async def _write_headers(self) -> None:
        request = self._req
        writer = cast(StreamWriter, self._payload_writer)
        assert request is not None
        version = request.version
        lines = [f"HTTP/{version[0]}.{version[1]} {self.status} {self.reason}"]
        lines.extend(f"{name}: {value}" for name, value in self.headers.items())
        if any(_FORBIDDEN.search(line) for line in lines):
            raise ValueError("Forbidden control character in a response header.")
        head = "\r\n".join(lines) + "\r\n\r\n"
        writer._headers_buf = head.encode("utf-8", "surrogateescape")
        writer._headers_written = False
        if self._send_headers_immediately:
            writer.send_headers()


class VerbatimStreamResponse(_VerbatimHead):
    """A streamed response with a byte-for-byte head."""


class VerbatimResponse(_VerbatimHead, web.Response):
    """A whole response with a byte-for-byte head."""
