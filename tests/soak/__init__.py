"""A soak: a real ``llm-sidecar serve`` under mixed load while its Redis and PostgreSQL crash.

Not part of ``make test`` or CI (no ``test_`` modules here, so pytest collects nothing).
Run it with ``make soak`` (30 minutes) or ``python -m tests.soak --minutes N``. It starts
private PostgreSQL and Redis servers (services.py), kills and restarts them on a schedule
(chaos.py), times the sidecar's recovery (probes.py), checks that reservations balance
(ledger.py) and that RSS and open descriptors stay flat (sampler.py), and exits non-zero
when any check of verdict.py fails. The report goes to stdout and to ``bench/SOAK.md``.
"""
