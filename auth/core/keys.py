"""Sidecar API keys: ``llmsc-`` + 32 base62 random characters + 6 base62 CRC32 characters.

The prefix lets secret scanners find leaked keys; the checksum lets the sidecar
reject typos and garbage without a repository round trip. Only the SHA-256
digest is ever stored. A key carries about 190 bits of entropy, so a plain
(unsalted) digest is safe: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib
from typing import Final

PREFIX: Final = "llmsc-"
ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LENGTH: Final = 32
CHECKSUM_LENGTH: Final = 6  # 62**6 > 2**32, so every CRC32 fits
KEY_LENGTH: Final = len(PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
_CHECKED_END: Final = KEY_LENGTH - CHECKSUM_LENGTH


def _checksum(text: str) -> str:
    value = zlib.crc32(text.encode("ascii"))
    out = []
    for _ in range(CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        out.append(ALPHABET[digit])
    return "".join(out)


def generate() -> str:
    """A fresh random key; show it once, store only :func:`digest` of it."""
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    head = PREFIX + body
    return head + _checksum(head)


def is_well_formed(key: str) -> bool:
    """Cheap structural check (length, prefix, alphabet, checksum); no regex, no I/O."""
    if len(key) != KEY_LENGTH or not key.startswith(PREFIX):
        return False
    # str.isalnum alone accepts non-ASCII digits and letters; isascii rules them out.
    tail = key[len(PREFIX) :]
    if not (tail.isascii() and tail.isalnum()):
        return False
    return key[_CHECKED_END:] == _checksum(key[:_CHECKED_END])


def digest(key: str) -> str:
    """SHA-256 hex digest of a key: the only form the repository ever holds."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def same_digest(a: str, b: str) -> bool:
    """Constant-time comparison, so timing never tells how much of a digest matched."""
    return hmac.compare_digest(a, b)
