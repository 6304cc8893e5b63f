"""Benchmark harness for llm-sidecar: ``python -m bench`` (``make bench``).

Starts a fast fake upstream (nginx, or when nginx cannot be had the project's aiohttp fake,
``python -m tests.support.fake_upstream``, which also paces the probes' SSE), then
measures direct calls, a naive aiohttp passthrough (the yardstick), the sidecar with every
feature on and the sidecar without tracing, interleaved, with wrk and a small SSE probe.
Kept out of the product package: nothing here is imported by ``proxy`` or ``auth``.
"""
