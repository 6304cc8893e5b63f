"""Test doubles for the auth hexagon: a fake clock and an instrumented repository."""

from __future__ import annotations

import asyncio

from auth.adapters.repo_memory import InMemoryUserRepository
from auth.core.errors import RepositoryUnavailable
from auth.core.models import KeyRecord


class InstrumentedRepository(InMemoryUserRepository):
    """In-memory repository that counts lookups, can hold them at a gate, and can fail."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        self.active = 0
        self.peak_active = 0
        self.gate: asyncio.Event | None = None
        self.failure: Exception | None = None

    async def find_key(self, key_digest: str) -> KeyRecord | None:
        self.lookups += 1
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.failure is not None:
                raise self.failure
            return await super().find_key(key_digest)
        finally:
            self.active -= 1

    async def ping(self) -> None:
        if self.failure is not None:
            raise RepositoryUnavailable("down")
