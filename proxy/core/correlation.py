"""X-Correlation-ID: keep a caller's valid id, otherwise mint a fresh one."""

from __future__ import annotations

import os

HEADER = "X-Correlation-ID"
"""The header's one spelling: read from callers, sent upstream, returned on every answer."""
MAX_LENGTH = 128
_ALLOWED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


def is_valid(candidate: str) -> bool:
    """1-128 characters of ``[A-Za-z0-9._:-]`` (checked without a regex on the hot path)."""
    if not 0 < len(candidate) <= MAX_LENGTH or not candidate.isascii():
        return False
    return _ALLOWED.issuperset(candidate.encode())


def new_id() -> str:
    """128 random bits as 32 hex digits: unique enough, cheap (one syscall-free call)."""
    return os.urandom(16).hex()


def correlation_id_for(received: str | None) -> str:
    if received is not None and is_valid(received):
        return received
    return new_id()
