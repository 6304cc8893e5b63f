"""A soak run: a real ``llm-sidecar serve`` under mixed load and faults for minutes.

Not part of ``make test`` or CI (no ``test_`` modules here, so pytest collects nothing).
Run it with ``make soak`` or ``python -m tests.soak --minutes N``; it samples the
sidecar's RSS and open file descriptors, fits a line to each, and exits non-zero when
either keeps growing. The report goes to stdout and to ``bench/SOAK.md``.
"""
