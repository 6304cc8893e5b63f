"""The report's fixed prose: how the chaos works, and the hand check that the soak can fail."""

from __future__ import annotations

HOW = """\
The soak never touches the machine's shared PostgreSQL or Redis. It starts its own:
`initdb` of a fresh cluster into a temp dir (`-A trust`, run as the `postgres` OS user
when the soak is root) served by `postgres -p <free port> -c fsync=off`, and a
`redis-server --port <free port> --save "" --appendonly no`. The sidecar reaches them
through `LLM_SIDECAR_DATABASE_URL=postgresql://...` and `LLM_SIDECAR_REDIS_URL=redis://...`;
tenants and users are made with the CLI (`llm-sidecar tenants create`, `users create`).

At 20 % and 60 % of the load Redis gets `kill -9`; at 35 % and 75 % PostgreSQL does
(the postmaster and, by pid, its backends, as a crashed host would lose them). Each stays
down for the outage time, then starts again on the same port and data directory:
PostgreSQL replays its WAL and keeps its users, Redis comes back empty. The sidecar is
never restarted. Rate limiting runs in the default `RATE_LIMIT_FAILURE_MODE=open`, so a
Redis outage should cost no request (the in-process fallback admits them), while a
PostgreSQL outage answers `503 auth_unavailable` to every key not in the auth cache.

Every outcome is classified: relayed from the upstream (its own errors carry codes
`fake_<status>`), answered by the sidecar (by the `code` of its OpenAI-shaped body), or a
client-side end (hang-up). A scenario lists what it may get; beyond that only the
documented 503 of the service that is down, for a request that overlapped its outage
(kill to recovery + 5 s), is forgiven, and (unless `--strict-compressed`) a non-5xx answer
to a compressed request body, counted under its own name. Recovery is timed by probes
every 0.25 s: a never-used valid key (its first 200 is an uncached lookup the restarted
PostgreSQL answered), and a tenant whose request budget the probe drains in Redis right
before each request (429 means the sidecar read Redis; 200 means its in-process fallback
admitted it). A recovery must then hold: the sidecar's failure counters (Redis backend
errors, repository errors), sampled every second, must not rise while the service is up,
from its recovery to its next kill, nor before the first outage. With traffic stopped,
`llm_sidecar_inflight_requests` must be 0 and the reservation ledger must balance (see
tests/soak/ledger.py)."""

CAN_IT_FAIL = """\
Checked by hand on 2026-12-04 on this machine, 2-minute runs with the chaos: a
`sitecustomize` (on `PYTHONPATH`, active only in the `serve` process) that made the
sidecar forget every 50th Redis refund failed the run on the reservation ledger alone
(+475 tokens never returned: 19 forgotten refunds of 25 tokens), every other check
passing. Dropping the moment of the kill from the outage window (stamping it once the
kill had finished) failed a 3-minute run with 2 `503 auth_unavailable` answers sent a few
milliseconds too early to be forgiven. Earlier (2026-11-28, before the chaos), planting
8 bytes kept per authenticated request gave an RSS slope of +2.57 MiB/min and failed,
and 64 bytes plus one `/dev/null` descriptor every 500 requests failed every resource
check."""
