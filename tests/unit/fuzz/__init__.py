"""Property-based fuzz tests of the parsers on the sidecar's edge (Hypothesis).

They run derandomized in ``make test``, so CI sees the same inputs every time; set
``LLM_SIDECAR_FUZZ_SCALE=20`` to run twenty times the examples with fresh randomness.
"""
