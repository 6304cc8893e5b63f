"""``python -m bench.noauth``: ``llm-sidecar serve`` with authentication bypassed.

For the benchmark's auth-cost row only: the same settings, logging and adapters as the
real command, except that every request is the one fixed caller below, so the key is
never looked up (not even in the cache). The product has no switch for this on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import uvloop

from proxy.adapters.logging_structlog import configure_logging
from proxy.entrypoints.app import Overrides
from proxy.entrypoints.serve import run_until_stopped
from proxy.settings import load_settings


@dataclass(frozen=True, slots=True)
class FixedCaller:
    """A caller (``proxy.core.ports.Caller``) with limits far above any load."""

    tenant: str = "bench-noauth"
    user: str = "bench"
    rpm: int | None = 100_000_000
    tpm: int | None = 1_000_000_000
    burst: int | None = None
    allowed_upstreams: frozenset[str] | None = None


class FixedAuthenticator:
    """Authenticates everything, header or not, as the same caller."""

    __slots__ = ("_caller",)

    def __init__(self, caller: FixedCaller | None = None) -> None:
        self._caller = caller or FixedCaller()

    async def authenticate(self, authorization: str | None) -> FixedCaller:
        return self._caller


def main() -> int:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    overrides = Overrides(authenticator=FixedAuthenticator())
    return uvloop.run(run_until_stopped(settings, overrides))


if __name__ == "__main__":
    raise SystemExit(main())
