"""One place for how hard the fuzz tests try."""

from __future__ import annotations

import os

from hypothesis import settings

SCALE = max(1, int(os.environ.get("LLM_SIDECAR_FUZZ_SCALE", "1")))
"""Example multiplier; above 1 the inputs are random again, to find new cases."""


def fuzz(examples: int) -> settings:
    """Settings for one fuzz test: ``examples`` inputs, the same ones on every CI run.

    No deadline: a shared CI host can stall any one example, and speed is not the property.
    """
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
    )
