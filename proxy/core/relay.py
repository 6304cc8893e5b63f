"""Relaying an upstream response to the caller, and reading its usage on the way.

Responses with a known length up to ``WHOLE_BODY_LIMIT`` (not SSE) are read whole and
sent in one write: fewer syscalls than a copy loop, and their ``usage`` can be read.
Everything else streams chunk by chunk as it arrives; SSE streams are scanned for the
usage event without parsing every chunk.
"""

from __future__ import annotations

from proxy.core.content_coding import decode
from proxy.core.errors import ClientDisconnected
from proxy.core.headers import response_headers_for_caller
from proxy.core.ports import Headers, ResponseSink, UpstreamResponse
from proxy.core.usage import Usage, usage_from_json
from proxy.core.usage_sse import SseUsageScanner, UsageEventStripper

WHOLE_BODY_LIMIT = 256 * 1024
USAGE_DECODE_LIMIT = 4 * 1024 * 1024
"""A compressed JSON reply is decoded this far for its ``usage`` and no further: a reply
that inflates past it (a bomb, or a huge embedding batch) keeps the reservation's estimate."""


async def relay(
    response: UpstreamResponse,
    sink: ResponseSink,
    extra: Headers,
    *,
    strip_usage: bool,
    head_only: bool = False,
) -> Usage | None:
    """Send the upstream's response to the caller; return the usage it reported, if any.

    ``extra`` headers are added to the upstream's; with ``strip_usage`` the usage-only
    event of a stream (asked for by the sidecar, not the caller) is kept from the caller.
    ``head_only`` (a HEAD request): the upstream's ``Content-Length`` is the caller's too.
    """
    headers = response_headers_for_caller(response.headers)
    if extra:
        headers.extend(extra)
    length = response.content_length
    if head_only:
        if length is not None:
            headers.append(("Content-Length", str(length)))
        await sink.send_whole(response.status, headers, b"", verbatim=response.verbatim_head)
        return None
    is_sse = response.content_type.startswith("text/event-stream")
    if length is not None and length <= WHOLE_BODY_LIMIT and not is_sse:
        body = await response.read()
        usage = None
        if response.status < 400:
            usage = usage_from_json(
                _decoded(body, response.content_type, response.content_encoding)
            )
        try:
            await sink.send_whole(response.status, headers, body, verbatim=response.verbatim_head)
        except ClientDisconnected as exc:
            exc.usage = usage  # the upstream produced it all: a caller gone still pays it
            raise
        return usage
    await sink.start(response.status, headers, verbatim=response.verbatim_head)
    scanner = SseUsageScanner() if is_sse and response.status < 400 else None
    # The caller did not ask for the usage event the sidecar asked for: keep it from them.
    stripper = UsageEventStripper() if scanner is not None and strip_usage else None
    relayed = 0  # data: events of a successful stream sent to the caller
    try:
        async for chunk in response.iter_chunks():
            if scanner is not None:
                scanner.feed(chunk)
                if stripper is not None:
                    chunk = stripper.strip(chunk)
                    if not chunk:
                        continue
            await sink.write(chunk)
            if scanner is not None:
                relayed += chunk.count(b"data:")
        if stripper is not None and (rest := stripper.flush()):
            await sink.write(rest)
        await sink.finish()
    except ClientDisconnected as exc:
        exc.usage = scanner.result() if scanner is not None else None
        exc.events_relayed = relayed
        raise
    return scanner.result() if scanner is not None else None


def _decoded(body: bytes, content_type: str, content_encoding: str) -> bytes:
    """The body as JSON bytes for usage accounting (the caller still gets it untouched).

    Only a JSON reply is decoded, and never past ``USAGE_DECODE_LIMIT``: decoding is for
    reading a few fields, so it must not cost the sidecar's memory whatever it is sent.
    """
    if not content_encoding or content_encoding == "identity":
        return body
    if "json" not in content_type:
        return b""
    try:
        return bytes(decode(body, content_encoding, USAGE_DECODE_LIMIT))
    except ValueError:  # unknown, corrupt, or too large once decoded
        return b""
