"""Request bodies in HTTP content codings, and a bounded decoder for them.

The encoders make the same bytes on every machine: gzip and deflate (zlib-wrapped or
raw) come from the standard library's zlib, zstd and br are framed by hand (zstd raw
and RLE blocks, brotli uncompressed meta-blocks), so a fuzz seed means the same cases
whether or not a zstd or brotli module is installed. ``bomb`` makes small bodies that
inflate to far more (gzip and deflate by repeating one fully flushed deflate block, zstd
by RLE blocks). ``decode`` reads bodies back, bounded, with whatever modules there are;
``decodable`` says which codings those are.
"""

from __future__ import annotations

import functools
import importlib
import struct
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

ZSTD_BLOCK = 128 * 1024
"""The largest zstd block (and this window: 2**17)."""
BROTLI_META_BLOCK = 1 << 16
"""Uncompressed brotli meta-blocks of at most 4 nibbles of length."""


class Undecodable(ValueError):
    """The body is not in the coding it claims (garbage, truncated, trailing bytes)."""


class Unsupported(ValueError):
    """A coding this process cannot decode (unknown, or its module is not installed)."""


class TooLarge(ValueError):
    """Decoding would pass the limit."""


def _zlib(data: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


def gzip_encode(data: bytes) -> bytes:
    # zlib's gzip wrapper writes mtime 0, so the bytes do not depend on the clock.
    return _zlib(data, 31)


def deflate_encode(data: bytes) -> bytes:
    """RFC 9110's ``deflate``: the zlib format (RFC 1950)."""
    return _zlib(data, 15)


def raw_deflate_encode(data: bytes) -> bytes:
    """Bare RFC 1951 deflate, which many clients send as ``deflate`` by mistake."""
    return _zlib(data, -15)


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_HEADER = _ZSTD_MAGIC + b"\x00\x38"
"""No content size, no checksum, no dictionary; a 2**17-byte window (exponent 7)."""


def _zstd_block(kind: int, size: int, last: bool) -> bytes:
    return (last | kind << 1 | size << 3).to_bytes(3, "little")


def zstd_encode(data: bytes) -> bytes:
    """A zstd frame (RFC 8878) of raw blocks: valid, not smaller."""
    blocks = [data[i : i + ZSTD_BLOCK] for i in range(0, len(data), ZSTD_BLOCK)] or [b""]
    return _ZSTD_HEADER + b"".join(
        _zstd_block(0, len(block), index == len(blocks) - 1) + block
        for index, block in enumerate(blocks)
    )


def br_encode(data: bytes) -> bytes:
    """A brotli stream (RFC 7932) of uncompressed meta-blocks and an empty last one."""
    out, bits, count = bytearray(), 0, 1  # WBITS 16: a single 0 bit
    for start in range(0, len(data), BROTLI_META_BLOCK):
        block = data[start : start + BROTLI_META_BLOCK]
        # ISLAST 0, MNIBBLES 4 (00), MLEN-1 in 16 bits, ISUNCOMPRESSED 1, pad to a byte.
        bits |= ((len(block) - 1) << 3 | 1 << 19) << count
        count += 20
        out += bits.to_bytes((count + 7) // 8, "little")
        out += block
        bits, count = 0, 0
    bits |= 0b11 << count  # ISLAST 1, ISLASTEMPTY 1
    count += 2
    return bytes(out + bits.to_bytes((count + 7) // 8, "little"))


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip_encode,
    "deflate": deflate_encode,
    "deflate-raw": raw_deflate_encode,
    "zstd": zstd_encode,
    "br": br_encode,
}
"""By name (``deflate-raw`` goes out as ``Content-Encoding: deflate``)."""


def header_name(name: str) -> bytes:
    """The ``Content-Encoding`` token an encoder's output is sent under."""
    return name.partition("-")[0].encode()


@functools.cache
def _deflate_bomb(wbits: int, inflated_mib: int) -> bytes:
    """``inflated_mib`` MiB of zeros, quickly: after a full flush, each MiB compresses alike."""
    zeros = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = first + repeated * (inflated_mib - 1) + compressor.flush()
    if wbits == -15:
        return stream
    if wbits == 15:
        adler = 1
        for _ in range(inflated_mib):
            adler = zlib.adler32(zeros, adler)
        return b"\x78\xda" + stream + struct.pack(">I", adler)
    crc = 0
    for _ in range(inflated_mib):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + stream + struct.pack("<II", crc, (inflated_mib << 20) & 0xFFFFFFFF)


def _zstd_bomb(inflated_mib: int) -> bytes:
    blocks = inflated_mib * (1 << 20) // ZSTD_BLOCK
    rle = _zstd_block(1, ZSTD_BLOCK, False) + b"\x00"
    return _ZSTD_HEADER + rle * (blocks - 1) + _zstd_block(1, ZSTD_BLOCK, True) + b"\x00"


def bomb(name: str, inflated_mib: int) -> bytes:
    """A body in ``name`` (gzip, deflate, deflate-raw, zstd): ``inflated_mib`` MiB of zeros."""
    if name == "zstd":
        return _zstd_bomb(inflated_mib)
    return _deflate_bomb({"gzip": 31, "deflate": 15, "deflate-raw": -15}[name], inflated_mib)


# ------------------------------------------------------------------------------ decoding


def _module(*names: str) -> ModuleType | None:
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


_ZSTD = _module("compression.zstd", "backports.zstd", "zstandard")
_BROTLI = _module("brotli", "brotlicffi")


def decodable() -> frozenset[str]:
    """The ``Content-Encoding`` tokens this Python can decode (what aiohttp can too)."""
    names = {"gzip", "deflate"}
    if _ZSTD is not None:
        names.add("zstd")
    if _BROTLI is not None:
        names.add("br")
    return frozenset(names)


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Undecodable(str(exc)) from None
    if len(data) > limit:
        raise TooLarge
    if not decompressor.eof or decompressor.unused_data:
        raise Undecodable("truncated" if not decompressor.eof else "trailing bytes")
    return data


def _unzstd(body: bytes, limit: int) -> bytes:
    assert _ZSTD is not None
    decompressor: Any = _ZSTD.ZstdDecompressor()
    stream: Any = decompressor.decompressobj() if _ZSTD.__name__ == "zstandard" else decompressor
    data, start = bytearray(), 0
    try:
        # Small slices: a slice of RLE blocks inflates at most 32,768-fold, so a bomb is
        # caught a few MiB past the limit instead of whole.
        while start < len(body) and not stream.eof:
            data += stream.decompress(body[start : start + 16])
            start += 16
            if len(data) > limit:
                raise TooLarge
    except TooLarge:
        raise
    except Exception as exc:  # each module has its own error class
        raise Undecodable(str(exc)) from None
    if not stream.eof:
        raise Undecodable("truncated")
    if stream.unused_data or start < len(body):
        raise Undecodable("trailing bytes")
    return bytes(data)


def _unbrotli(body: bytes, limit: int) -> bytes:
    assert _BROTLI is not None
    decompressor: Any = _BROTLI.Decompressor()
    try:
        data = decompressor.process(body)
        finished = decompressor.is_finished()
    except Exception as exc:  # brotli.error, brotlicffi.error
        raise Undecodable(str(exc)) from None
    if len(data) > limit:
        raise TooLarge
    if not finished:
        raise Undecodable("truncated")
    return bytes(data)


def decode_one(body: bytes, coding: str, limit: int) -> bytes:
    """``body`` decoded from one coding, at most ``limit`` bytes of it."""
    coding = coding.strip().lower()
    if coding == "identity":
        return body
    if coding == "gzip":
        return _inflate(body, 31, limit)
    if coding == "deflate":
        # As aiohttp does: a first byte that is no zlib header means bare deflate.
        return _inflate(body, 15 if body[:1] and body[0] & 0x0F == 8 else -15, limit)
    if coding == "zstd" and _ZSTD is not None:
        return _unzstd(body, limit)
    if coding == "br" and _BROTLI is not None:
        return _unbrotli(body, limit)
    raise Unsupported(coding)


def decode(body: bytes, content_encoding: str, limit: int) -> bytes:
    """``body`` decoded from every coding in ``content_encoding``, the last applied first."""
    for coding in reversed(content_encoding.split(",")):
        body = decode_one(body, coding, limit)
    return body
