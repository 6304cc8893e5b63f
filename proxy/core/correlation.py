"""X-Correlation-ID: keep a caller's valid id, otherwise mint a fresh one."""

from __future__ import annotations

from random import getrandbits

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
    """128 random bits as 32 hex digits. An id, not a secret: the Mersenne Twister
    (reseeded after fork) serves, without ``os.urandom``'s syscall, which releases the
    GIL to the export and log threads mid-request."""
    return f"{getrandbits(128):032x}"


def correlation_id_for(received: str | None) -> str:
    if received is not None and is_valid(received):
        return received
    return new_id()
