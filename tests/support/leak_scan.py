"""The secrets scan over every output channel of a whole test run.

While the suite runs, every sidecar subprocess registers its outputs here: its log
(stdout and stderr), a last ``/metrics`` scrape, and the spans it exported (all
sidecars export to one session-wide collector); tests add the error bodies they read.
Every key a test mints is registered as a secret, with its stored digest. At the end of
the session :func:`findings` looks for each secret, and for the prompt marker, in all of
it; ``tests/conftest.py`` fails the run if anything turns up.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

PROMPT_MARKER = "PROMPT-MARKER-d41d8cd98f00"
"""Tests put this only inside prompts: it must never come out anywhere else."""


@dataclass
class _Ledger:
    secrets: set[str] = field(default_factory=set)
    files: list[Path] = field(default_factory=list)
    blobs: list[tuple[str, bytes]] = field(default_factory=list)
    span_sink_url: str | None = None


LEDGER = _Ledger(secrets={PROMPT_MARKER})


def add_secret(secret: str) -> None:
    """A key (or provider key) that must never be output; its SHA-256 digest neither."""
    LEDGER.secrets.add(secret)
    LEDGER.secrets.add(hashlib.sha256(secret.encode()).hexdigest())


def add_file(path: Path) -> None:
    LEDGER.files.append(path)


def add_output(channel: str, data: bytes) -> None:
    """Something the sidecar sent out (an error body, exported spans)."""
    LEDGER.blobs.append((channel, data))


def findings() -> tuple[list[str], int]:
    """(each place a secret turned up, bytes scanned)."""
    needles = [(s, s.encode()) for s in sorted(LEDGER.secrets)]
    found: list[str] = []
    scanned = 0
    outputs = [(str(p), p.read_bytes()) for p in LEDGER.files if p.exists()] + LEDGER.blobs
    for where, data in outputs:
        scanned += len(data)
        found.extend(f"{where}: {text[:12]}..." for text, needle in needles if needle in data)
    return found, scanned
