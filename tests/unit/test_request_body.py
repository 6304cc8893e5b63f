"""What the sidecar reads of a request body, its bounded decoding, and the changes it makes."""

from __future__ import annotations

import contextlib
import gzip
import zlib
from typing import Any

import orjson
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.content_coding import CorruptCoding, TooLarge, UnknownCoding, decode
from proxy.core.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from proxy.core.request_body import accepts_stream_usage, read_json_object

CHAT: dict[str, Any] = {
    "model": "m",
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}
RAW = orjson.dumps(CHAT)


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


ENCODED = {
    "gzip": gzip.compress(RAW),
    "deflate": zlib.compress(RAW),
    "zstd": zstandard.ZstdCompressor().compress(RAW),
}


@pytest.mark.parametrize("coding", sorted(ENCODED))
def test_each_coding_decodes_to_the_original(coding: str) -> None:
    """gzip, zlib deflate and zstd bodies decode to the bytes that were compressed."""
    assert decode(ENCODED[coding], coding, 1 << 20) == RAW


def test_raw_deflate_and_stacked_codings_decode() -> None:
    """Raw deflate (what some clients send) and a list of codings undone in reverse order."""
    assert decode(_raw_deflate(RAW), "deflate", 1 << 20) == RAW
    stacked = zstandard.ZstdCompressor().compress(gzip.compress(RAW))
    assert decode(stacked, "gzip, zstd", 1 << 20) == RAW
    assert decode(RAW, "identity", 1 << 20) == RAW


def test_gzip_members_are_concatenated() -> None:
    """A gzip body of two members decodes to both (RFC 1952 allows several)."""
    assert decode(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 100) == b"abcd"


@pytest.mark.parametrize("coding", sorted(ENCODED))
def test_truncated_and_lying_bodies_are_corrupt(coding: str) -> None:
    """A cut compressed body and a plain body that claims a coding are both refused."""
    with pytest.raises(CorruptCoding):
        decode(ENCODED[coding][:-6], coding, 1 << 20)
    with pytest.raises(CorruptCoding):
        decode(RAW, coding, 1 << 20)


@pytest.mark.parametrize("coding", sorted(ENCODED))
def test_bombs_stop_one_byte_past_the_limit(coding: str) -> None:
    """64 MiB of zeros compressed to kilobytes is refused at a 1 MiB limit, whatever the coding."""
    zeros = bytes(64 << 20)
    bomb = {
        "gzip": gzip.compress,
        "deflate": zlib.compress,
        "zstd": zstandard.ZstdCompressor().compress,
    }[coding](zeros)
    assert len(bomb) < 1 << 20
    with pytest.raises(TooLarge):
        decode(bomb, coding, 1 << 20)


def test_unknown_codings_are_named() -> None:
    """br and made-up codings raise UnknownCoding before any decoding is tried."""
    with pytest.raises(UnknownCoding, match="br"):
        decode(ENCODED["gzip"], "gzip, br", 1 << 20)


@given(st.binary(max_size=200), st.sampled_from(["gzip", "deflate", "zstd", "gzip, deflate"]))
def test_random_bytes_never_escape_the_three_errors(data: bytes, coding: str) -> None:
    """Whatever the bytes, decoding returns or raises one of the module's own errors."""
    with contextlib.suppress(CorruptCoding, TooLarge):
        decode(data, coding, 1000)


def test_compressed_json_is_read_and_forwarded_as_received() -> None:
    """A gzip JSON body is read through a decoded copy; unchanged, the raw bytes go upstream."""
    document = read_json_object(ENCODED["gzip"], "application/json", "gzip", 1 << 20)
    assert document is not None
    assert document.payload == CHAT
    assert document.for_upstream() is ENCODED["gzip"]


def test_body_errors_map_to_4xx() -> None:
    """Corrupt coding is 400, a bomb 413, an unknown coding on JSON 415, bad JSON 400."""
    with pytest.raises(BadRequest) as corrupt:
        read_json_object(RAW, "application/json", "gzip", 1 << 20)
    assert corrupt.value.code == "invalid_content_encoding"
    with pytest.raises(PayloadTooLarge):
        read_json_object(gzip.compress(bytes(4 << 20)), "application/json", "gzip", 1 << 20)
    with pytest.raises(UnsupportedMediaType):
        read_json_object(b"x", "application/json", "br", 1 << 20)
    with pytest.raises(BadRequest) as invalid:
        read_json_object(b"{nope", "application/json", "", 1 << 20)
    assert invalid.value.code == "invalid_json"


def test_json_sent_as_text_is_still_read() -> None:
    """A JSON object labelled text/plain (or unlabelled) is read, so its tokens are charged."""
    for content_type in ("text/plain", "", "application/octet-stream"):
        document = read_json_object(b"  \n" + RAW, content_type, "", 1 << 20)
        assert document is not None, content_type
        assert document.payload["model"] == "m"
    assert read_json_object(b"{not json", "text/plain", "", 1 << 20) is None
    assert read_json_object(b"hello", "text/plain", "", 1 << 20) is None
    assert read_json_object(RAW, "multipart/form-data; boundary=x", "", 1 << 20) is None
    assert read_json_object(b"x", "audio/wav", "br", 1 << 20) is None


def test_usage_option_is_spliced_without_reserialising() -> None:
    """Adding include_usage appends it to the object; the caller's bytes are otherwise kept."""
    raw = b'{"model": "m",  "stream": true, "messages": []}\n'
    document = read_json_object(raw, "application/json", "", 1 << 20)
    assert document is not None
    assert document.ask_stream_usage()
    sent = document.for_upstream()
    assert sent.startswith(b'{"model": "m",  "stream": true, "messages": []')
    assert orjson.loads(sent)["stream_options"] == {"include_usage": True}


def test_usage_option_respects_the_callers_choice() -> None:
    """An explicit include_usage is kept; other stream_options gain it; the model is rewritten."""
    declined = {"stream": True, "stream_options": {"include_usage": False}}
    document = read_json_object(orjson.dumps(declined), "application/json", "", 1 << 20)
    assert document is not None
    assert not document.ask_stream_usage()
    assert not document.changed
    other = {"model": "groq/x", "stream": True, "stream_options": {"include_obfuscation": False}}
    document = read_json_object(gzip.compress(orjson.dumps(other)), "application/json", "gzip", 99)
    assert document is not None
    assert document.ask_stream_usage()
    document.set_model("x")
    assert orjson.loads(document.for_upstream()) == {
        "model": "x",
        "stream": True,
        "stream_options": {"include_obfuscation": False, "include_usage": True},
    }


def test_only_completions_endpoints_take_the_usage_option() -> None:
    """Chat Completions and legacy Completions accept stream_options; nothing else does."""
    assert accepts_stream_usage("https://api.openai.com/v1/chat/completions")
    assert accepts_stream_usage("https://api.openai.com/v1/completions?x=1")
    for path in ("responses", "threads/runs", "threads/t/runs", "audio/speech", "images/edits"):
        assert not accepts_stream_usage(f"https://api.openai.com/v1/{path}"), path
    assert not accepts_stream_usage(
        "https://api.openai.com/v1/threads/t/runs/r/submit_tool_outputs"
    )
