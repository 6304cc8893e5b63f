"""Key format: generation, structural check, digest."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from auth.core import keys


def test_generated_keys_are_well_formed_prefixed_and_unique() -> None:
    """Every generated key passes the check, carries the prefix and the fixed length."""
    generated = {keys.generate() for _ in range(200)}
    assert len(generated) == 200
    for key in generated:
        assert key.startswith("llmsc-")
        assert len(key) == keys.KEY_LENGTH
        assert keys.is_well_formed(key)


@given(st.data())
def test_any_single_character_change_is_rejected(data: st.DataObject) -> None:
    """The CRC32 checksum catches every one-character substitution (typos, truncation)."""
    key = keys.generate()
    index = data.draw(st.integers(min_value=len(keys.PREFIX), max_value=len(key) - 1))
    # Draw a shift, not a character: what Hypothesis draws must not depend on the random key.
    shift = data.draw(st.integers(min_value=1, max_value=len(keys.ALPHABET) - 1))
    replacement = keys.ALPHABET[(keys.ALPHABET.index(key[index]) + shift) % len(keys.ALPHABET)]
    mutated = key[:index] + replacement + key[index + 1 :]
    assert not keys.is_well_formed(mutated)


@given(st.text(max_size=120))
def test_arbitrary_text_is_rejected_without_error(text: str) -> None:
    """Random text (non-ASCII, NUL, surrogates included) is never accepted and never raises."""
    assert not keys.is_well_formed(text)
    assert not keys.is_well_formed("llmsc-" + text)


def test_wrong_prefix_length_or_alphabet_is_rejected() -> None:
    """Near misses fail the cheap structural checks before the checksum."""
    key = keys.generate()
    assert not keys.is_well_formed("LLMSC-" + key[6:])
    assert not keys.is_well_formed(key[:-1])
    assert not keys.is_well_formed(key + "0")
    assert not keys.is_well_formed(key[:10] + "-" + key[11:])
    assert not keys.is_well_formed(key[:10] + "\u0663" + key[11:])  # Arabic-Indic digit 3


def test_digest_is_sha256_hex_and_never_contains_the_key() -> None:
    """The stored form is 64 lowercase hex characters, stable, and unrelated to the key text."""
    key = keys.generate()
    value = keys.digest(key)
    assert len(value) == 64
    assert set(value) <= set(string.hexdigits.lower())
    assert value == keys.digest(key)
    assert key not in value
    assert keys.same_digest(value, keys.digest(key))
    assert not keys.same_digest(value, keys.digest(keys.generate()))


def test_digest_accepts_lone_surrogates() -> None:
    """Header text decoded with surrogateescape still digests instead of raising."""
    assert len(keys.digest("llmsc-\udcff")) == 64
