"""What a browser's EventSource would make of a byte stream: the oracle both the
Hypothesis properties and the atheris harness compare the stripper's output against."""

from __future__ import annotations

import re


def dispatched(stream: bytes) -> list[tuple[bytes, bytes]]:
    """``(type, data)`` of each event an EventSource dispatches (WHATWG HTML, 9.2.6)."""
    found, kind, data = [], b"message", list[bytes]()
    for line in re.split(rb"\r\n|\n", stream)[:-1]:  # an unterminated last line is dropped
        if not line:
            if data:
                found.append((kind, b"\n".join(data)))
            kind, data = b"message", []
        elif not line.startswith(b":"):
            name, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if name == b"data":
                data.append(value)
            elif name == b"event":
                kind = value
    return found
