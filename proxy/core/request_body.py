"""What the sidecar reads of a request body, and the only changes it makes to one.

The body goes upstream exactly as received (``Content-Encoding`` and all) unless the
sidecar must change it, and it changes it in two cases only:

- the model: a ``/v1`` route strips the ``upstream/`` prefix, a fallback maps it;
- ``stream_options.include_usage: true`` on a Chat Completions or legacy Completions
  stream that did not say (the only endpoints whose schema has the option).

A changed body is sent as plain JSON without ``Content-Encoding`` (ADR 0080). Adding the
usage option alone is a splice at the end of the object: an 8 MiB prompt is not parsed
into a second copy and serialised into a third just to gain 40 bytes.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.core.content_coding import CorruptCoding, TooLarge, UnknownCoding, decode
from proxy.core.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from proxy.core.ports import Body

STREAM_USAGE_ENDPOINTS = ("/chat/completions", "/completions")
"""Path endings whose request schema has ``stream_options`` (``/completions`` is legacy)."""

_OBJECT_START = re.compile(rb"[ \t\r\n]*\{")
_USAGE_OPTION = b',"stream_options":{"include_usage":true}}'


class JsonRequestBody:
    """A request body that is a JSON object: its fields, and the bytes to send upstream."""

    __slots__ = ("_decoded", "_reserialise", "_splice_usage", "payload", "raw")

    def __init__(self, raw: Body, decoded: Body, payload: dict[str, Any]) -> None:
        self.raw = raw
        self._decoded = decoded
        self.payload = payload
        self._splice_usage = False
        self._reserialise = False

    @property
    def changed(self) -> bool:
        return self._splice_usage or self._reserialise

    def set_model(self, model: str) -> None:
        if self.payload.get("model") != model:
            self.payload["model"] = model
            self._reserialise = True

    def ask_stream_usage(self) -> bool:
        """Ask a stream for its final usage event; ``True`` if the body changed.

        An explicit ``include_usage`` (true or false) is the caller's choice and kept.
        """
        payload = self.payload
        options = payload.get("stream_options")
        if options is None and "stream_options" not in payload:
            self._splice_usage = True
            return True
        if isinstance(options, dict) and "include_usage" not in options:
            options["include_usage"] = True
            self._reserialise = True
            return True
        return False

    def for_upstream(self) -> Body:
        """The bytes to send: as received, or the changed JSON (never encoded)."""
        if self._reserialise:
            if self._splice_usage:
                self.payload["stream_options"] = {"include_usage": True}
            return orjson.dumps(self.payload)
        if self._splice_usage:
            decoded = self._decoded.rstrip()  # the same object when nothing trails
            return b"".join((memoryview(decoded)[:-1], _USAGE_OPTION))
        return self.raw


def accepts_stream_usage(url: str) -> bool:
    """Whether the endpoint at ``url`` has ``stream_options`` in its request schema."""
    return url.partition("?")[0].endswith(STREAM_USAGE_ENDPOINTS)


def read_json_object(
    raw: Body, content_type: str, content_encoding: str, limit: int
) -> JsonRequestBody | None:
    """The body as a JSON object when it is one, else ``None`` (forwarded unread).

    Read whatever its declared type: a JSON body labelled ``text/plain`` must still be
    charged for its tokens. Raises 400 for a body declared JSON that is not, or whose
    coding is corrupt; 413 past ``limit`` decoded bytes; 415 for a coding the sidecar
    cannot undo on a body it must read.
    """
    if not raw or content_type.startswith("multipart/"):
        return None
    declared = "json" in content_type
    try:
        decoded = decode(raw, content_encoding, limit) if content_encoding else raw
    except UnknownCoding as exc:
        if not declared:
            return None
        raise UnsupportedMediaType(
            f"Content-Encoding {str(exc)[:32]!r} is not supported; send gzip, deflate, "
            "zstd or an uncompressed body."
        ) from None
    except CorruptCoding as exc:
        raise BadRequest(
            f"The request body is not valid for its Content-Encoding: {exc}.",
            code="invalid_content_encoding",
        ) from None
    except TooLarge:
        raise PayloadTooLarge(
            f"Request body is over the {limit}-byte limit once decoded."
        ) from None
    if not declared and _OBJECT_START.match(decoded) is None:
        return None
    try:
        payload = orjson.loads(decoded)
    except orjson.JSONDecodeError:
        if not declared:
            return None
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None
    return JsonRequestBody(raw, decoded, payload) if isinstance(payload, dict) else None
