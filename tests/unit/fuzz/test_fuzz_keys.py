"""Sidecar API keys: the structural check against any text, every typo, and the digest."""

from __future__ import annotations

import re
import zlib

from hypothesis import given
from hypothesis import strategies as st

from auth.core import keys
from tests.unit.fuzz.budget import fuzz

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
# Characters a typo or a copy-paste can bring in besides the key alphabet.
STRANGERS = "-_ .=+/\x00\n\t\u00e9\u0663\uff21\u212a"


def _reference_key(body: str) -> str:
    """The documented format built independently: prefix, body, CRC32 as 6 base62 digits."""
    head = "llmsc-" + body
    value = zlib.crc32(head.encode("ascii"))
    digits = ""
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits += BASE62[digit]
    return head + digits


bodies = st.text(BASE62, min_size=32, max_size=32)


def _mutations(key: str) -> st.SearchStrategy[str]:
    index = st.integers(0, len(key) - 1)
    return st.one_of(
        st.tuples(index, st.sampled_from(BASE62 + STRANGERS)).map(
            lambda edit: key[: edit[0]] + edit[1] + key[edit[0] + 1 :]
        ),
        index.map(lambda at: key[:at] + key[at + 1 :]),
        st.tuples(index, st.sampled_from(BASE62)).map(lambda e: key[: e[0]] + e[1] + key[e[0] :]),
        st.just(key.swapcase()),
        st.just(key + "\n"),
        st.just(" " + key),
    )


candidates = st.one_of(
    st.text(max_size=60),
    st.text(BASE62 + STRANGERS, min_size=44, max_size=44),
    st.text(BASE62, min_size=38, max_size=38).map(lambda tail: "llmsc-" + tail),
    bodies.map(_reference_key).flatmap(_mutations),
    bodies.map(_reference_key),
)


@fuzz(400)
@given(candidates)
def test_well_formed_means_exactly_the_documented_format(text: str) -> None:
    """is_well_formed never raises and agrees with an independent build of the format."""
    body = text[6:38]
    expected = len(text) == 44 and set(body) <= set(BASE62) and text == _reference_key(body)
    assert keys.is_well_formed(text) is expected


def test_generated_keys_are_always_well_formed() -> None:
    """Two thousand fresh keys all pass the check and match the documented format."""
    for _ in range(2000):
        key = keys.generate()
        assert keys.is_well_formed(key)
        assert key == _reference_key(key[6:38])


@fuzz(40)
@given(bodies)
def test_every_single_character_substitution_is_caught(body: str) -> None:
    """Replacing any one character of a valid key with any other makes it not well formed."""
    key = _reference_key(body)
    assert keys.is_well_formed(key)
    for at, original in enumerate(key):
        for replacement in BASE62 + STRANGERS:
            if replacement != original:
                assert not keys.is_well_formed(key[:at] + replacement + key[at + 1 :])


@fuzz(100)
@given(bodies)
def test_every_adjacent_transposition_is_caught(body: str) -> None:
    """Swapping two neighbouring different characters (a typing slip) is caught by the CRC."""
    key = _reference_key(body)
    for at in range(len(key) - 1):
        if key[at] != key[at + 1]:
            swapped = key[:at] + key[at + 1] + key[at] + key[at + 2 :]
            assert not keys.is_well_formed(swapped)


@fuzz(300)
@given(st.text(max_size=200) | bodies.map(_reference_key))
def test_digest_is_stable_64_hex_for_any_text(text: str) -> None:
    """Any text (lone surrogates too) digests to 64 lowercase hex, the same every time."""
    first = keys.digest(text)
    assert HEX64.fullmatch(first)
    assert keys.digest(text) == first


@fuzz(100)
@given(st.lists(bodies, min_size=2, max_size=8, unique=True))
def test_different_keys_have_different_digests(many: list[str]) -> None:
    """Distinct keys never share a digest (the repository looks keys up by it)."""
    generated = [_reference_key(body) for body in many]
    assert len({keys.digest(key) for key in generated}) == len(generated)
