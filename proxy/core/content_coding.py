"""Decoding a ``Content-Encoding`` for reading, never past a byte bound.

The body the sidecar forwards is always the one it received; what is decoded here is
the copy it reads (model, ``stream``, ``max_tokens``; an upstream response's ``usage``).
Every decoder stops one byte past ``limit``, so a decompression bomb costs at most
``limit`` bytes of memory before it is refused.

Codings: ``gzip`` (several members too), ``deflate`` (zlib-wrapped, as RFC 9110 says, or
raw, as some clients send it), ``zstd``, ``identity``; a list (``gzip, zstd``) is undone
in reverse order. Anything else raises :class:`UnknownCoding`.
"""

from __future__ import annotations

import zlib

import zstandard

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS


class UnknownCoding(ValueError):
    """A coding the sidecar cannot decode (``br``, ``compress``, a made-up name)."""


class CorruptCoding(ValueError):
    """The bytes are not what their coding says, or they end early."""


class TooLarge(ValueError):
    """Decoded, the body would exceed the limit."""


def codings(content_encoding: str) -> list[str]:
    """The codings named by a ``Content-Encoding`` value, in the order they were applied."""
    return [
        coding
        for part in content_encoding.lower().split(",")
        if (coding := part.strip()) and coding != "identity"
    ]


def decode(body: bytes | bytearray, content_encoding: str, limit: int) -> bytes | bytearray:
    """``body`` with its codings undone; raises one of this module's errors."""
    steps = codings(content_encoding)
    for coding in steps:  # check every name first: never spend CPU on a body we refuse
        if coding not in _DECODERS:
            raise UnknownCoding(coding)
    for coding in reversed(steps):
        body = _DECODERS[coding](body, limit)
    return body


def _inflate(body: bytes | bytearray, limit: int, wbits: int, *, members: bool) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(body, limit + 1 - size)  # never 0: "no limit" to zlib
        except zlib.error:
            raise CorruptCoding("not valid compressed data") from None
        size += len(part)
        if size > limit:
            raise TooLarge
        parts.append(part)
        if not inflater.eof:
            raise CorruptCoding("the compressed data ends early")
        body = inflater.unused_data
        if not body:
            return b"".join(parts)
        if not members:
            raise CorruptCoding("bytes follow the end of the compressed data")


def _gzip(body: bytes | bytearray, limit: int) -> bytes:
    return _inflate(body, limit, _GZIP_WBITS, members=True)


def _deflate(body: bytes | bytearray, limit: int) -> bytes:
    try:
        return _inflate(body, limit, _ZLIB_WBITS, members=False)
    except CorruptCoding:
        return _inflate(body, limit, _RAW_DEFLATE_WBITS, members=False)


def _zstd(body: bytes | bytearray, limit: int) -> bytes:
    decompressor = zstandard.ZstdDecompressor()
    try:
        # The reader bounds the output but cannot tell a cut frame from an ended one...
        reader = decompressor.stream_reader(body, read_across_frames=True)
        size = 0
        while chunk := reader.read(limit + 1 - size):
            size += len(chunk)
            if size > limit:
                raise TooLarge
        # ... which the frame decoder can, now that the output is known to be small.
        parts: list[bytes] = []
        while body:
            frame = decompressor.decompressobj()
            parts.append(frame.decompress(body))
            if not frame.eof:
                raise CorruptCoding("the compressed data ends early")
            body = frame.unused_data
    except zstandard.ZstdError:
        raise CorruptCoding("not valid compressed data") from None
    return b"".join(parts)


_DECODERS = {"gzip": _gzip, "x-gzip": _gzip, "deflate": _deflate, "zstd": _zstd}
