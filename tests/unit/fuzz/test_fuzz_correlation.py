"""X-Correlation-ID: whatever a caller sends, the id that comes out is safe to log and echo."""

from __future__ import annotations

import re
import string

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.correlation import correlation_id_for
from tests.unit.fuzz.budget import fuzz

ID_ALPHABET = string.ascii_letters + string.digits + "._:-"
# The contract's grammar, written out rather than imported.
VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}", re.ASCII)
MINTED = re.compile(r"[0-9a-f]{32}", re.ASCII)

valid_ids = st.text(ID_ALPHABET, min_size=1, max_size=128)
# Near misses: one forbidden character (header injection, NUL, look-alike unicode) in a
# valid id, or a valid alphabet past the length limit.
near_misses = st.one_of(
    st.tuples(
        st.text(ID_ALPHABET, max_size=64),
        st.sampled_from(["\r\n", "\n", "\r", "\x00", " ", "/", "\u2028", "\uff0d", "é", "\ud800"]),
        st.text(ID_ALPHABET, max_size=63),
    ).map("".join),
    st.text(ID_ALPHABET, min_size=129, max_size=4096),
    st.just(""),
)
anything = st.none() | valid_ids | near_misses | st.text(max_size=300)


def _is_valid(text: str) -> bool:
    return VALID.fullmatch(text) is not None


@fuzz(300)
@given(anything)
def test_the_id_is_always_valid(received: str | None) -> None:
    """Any header value (or none) yields 1-128 characters of [A-Za-z0-9._:-], nothing else."""
    assert _is_valid(correlation_id_for(received))


@fuzz(300)
@given(valid_ids)
def test_a_valid_id_is_kept_unchanged(received: str) -> None:
    """A caller's valid id comes back exactly as sent."""
    assert correlation_id_for(received) == received


@fuzz(300)
@given(near_misses | st.text(max_size=300).filter(lambda text: not _is_valid(text)))
def test_an_invalid_id_is_replaced_by_a_fresh_one(received: str) -> None:
    """An invalid value is never echoed: each request gets its own newly minted id."""
    first, second = correlation_id_for(received), correlation_id_for(received)
    assert first != received
    assert MINTED.fullmatch(first)
    assert first != second
