"""Coverage-guided fuzzing of the SSE usage scanner and stripper with atheris.

Optional, and no part of ``make test``: atheris is not a dependency. It ships a
manylinux wheel for CPython 3.11 on x86_64; install it beside the project, not into it::

    .venv/bin/python -m pip install --target /tmp/atheris-lib atheris
    mkdir -p /tmp/sse-corpus
    PYTHONPATH=/tmp/atheris-lib:. .venv/bin/python -m tests.fuzz_atheris.sse_usage_scanner \\
        -max_total_time=300 -max_len=4096 -dict=tests/fuzz_atheris/sse.dict /tmp/sse-corpus

(any libFuzzer flag works; the corpus directory is seeded with a few provider-shaped
streams when empty, and keeps what the fuzzer learnt between runs). Each
input is split into cut positions and a stream; the properties are those of
``tests/unit/fuzz/test_fuzz_usage.py``: nothing raises, the scanner's answer does not
depend on the chunking, and the stripper's output parses to the same events whether the
stream came whole or in pieces, and never to more events than went in.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from proxy.core.usage import Usage
    from proxy.core.usage_sse import SseUsageScanner, UsageEventStripper

from tests.unit.fuzz.sse_oracle import dispatched

SEED = (
    b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"hi"}}],'
    b'"usage":null}\n\n'
    b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\r\n\r\n'
    b": keep-alive\n\nevent: response.completed\n"
    b'data: {"response":{"id":"r","usage":{"input_tokens":1,"output_tokens":2}}}\n\n'
    b"data: [DONE]\n\n"
)


def _scan(pieces: list[bytes]) -> Usage | None:
    scanner = SseUsageScanner()
    for piece in pieces:
        scanner.feed(piece)
    return scanner.result()


def _strip(pieces: list[bytes]) -> bytes:
    stripper = UsageEventStripper()
    return b"".join(stripper.strip(piece) for piece in pieces) + stripper.flush()


def test_one_input(raw: bytes) -> None:
    provider = atheris.FuzzedDataProvider(raw)
    cuts = sorted(set(provider.ConsumeIntListInRange(provider.ConsumeIntInRange(0, 8), 0, 4096)))
    stream = provider.ConsumeBytes(provider.remaining_bytes())
    cuts = [cut for cut in cuts if cut < len(stream)]
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole = _scan([stream])
    if _scan(pieces) != whole:
        raise AssertionError(f"scanner depends on the chunking: {cuts}")
    stripped = dispatched(_strip([stream]))
    if dispatched(_strip(pieces)) != stripped:
        raise AssertionError(f"stripper output depends on the chunking: {cuts}")
    if len(stripped) > len(dispatched(stream)):
        raise AssertionError("the stripper made events up")


def _seed(corpus: Path) -> None:
    """Start an empty corpus from real stream shapes, cut a few ways."""
    if corpus.is_dir() and not any(corpus.iterdir()):
        for index, cuts in enumerate([b"\x00", b"\x01\x00\x05", b"\x03\x00\x30\x00\x61\x00\x90"]):
            (corpus / f"seed-{index}").write_bytes(cuts + SEED)


def main() -> None:
    for arg in sys.argv[1:]:
        if not arg.startswith("-"):
            _seed(Path(arg))
    test_one_input(b"\x00" + SEED)  # the seed itself must pass before fuzzing starts
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
