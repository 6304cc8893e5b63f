"""AuthService: resolve ``Authorization: Bearer <key>`` to a Principal, off the DB hot path.

A cache hit costs one header slice, one SHA-256 and one dict lookup. A miss goes
to the repository at most once per key digest at a time (single-flight), with at
most ``max_concurrent_lookups`` lookups in flight overall, and its answer (found
or not, enabled or not) is cached for ``cache_ttl_seconds``: disabling a user or
rotating a key takes effect within that TTL, and a flood of unknown keys costs
the database one bounded trickle of lookups.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Final

from auth.core import keys
from auth.core.cache import TtlCache
from auth.core.errors import FailureReason, InvalidCredentials, RepositoryUnavailable
from auth.core.models import Principal
from auth.core.ports import UserRepository

_SCHEME_LENGTH: Final = len("bearer ")
_COMMON_SCHEMES: Final = ("Bearer ", "bearer ")
_sha256 = hashlib.sha256


class AuthService:
    """Authenticate callers against a :class:`UserRepository`, with a bounded TTL cache.

    Usage::

        service = AuthService(repo, cache_ttl_seconds=30)
        principal = await service.authenticate(request.headers.get("Authorization"))
    """

    __slots__ = ("_denied", "_inflight", "_lookups", "_repo", "_valid")

    def __init__(
        self,
        repo: UserRepository,
        *,
        cache_ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_concurrent_lookups: int = 16,
        max_cache_entries: int = 10_000,
    ) -> None:
        if cache_ttl_seconds < 0:
            raise ValueError("cache_ttl_seconds must be >= 0")
        self._repo = repo
        # Separate caches so a flood of unknown keys can never evict valid ones.
        self._valid: TtlCache[bytes, Principal] = TtlCache(
            cache_ttl_seconds, max_cache_entries, clock
        )
        self._denied: TtlCache[bytes, FailureReason] = TtlCache(
            cache_ttl_seconds, max_cache_entries, clock
        )
        self._inflight: dict[bytes, asyncio.Task[Principal | FailureReason]] = {}
        self._lookups = asyncio.Semaphore(max_concurrent_lookups)

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal for a header value; raises InvalidCredentials or RepositoryUnavailable."""
        if not authorization:
            raise InvalidCredentials("missing")
        # The common spellings skip the lower() copy; any other casing still works.
        if (
            not authorization.startswith(_COMMON_SCHEMES)
            and authorization[:_SCHEME_LENGTH].lower() != "bearer "
        ):
            raise InvalidCredentials("malformed")
        key = authorization[_SCHEME_LENGTH:]
        if len(key) != keys.KEY_LENGTH:
            key = key.strip()
            if len(key) != keys.KEY_LENGTH:
                raise InvalidCredentials("malformed" if key else "missing")
        if not key.isascii():
            raise InvalidCredentials("malformed")
        raw_digest = _sha256(key.encode()).digest()
        principal = self._valid.get(raw_digest)
        if principal is not None:
            return principal
        return await self._authenticate_slow(key, raw_digest)

    async def _authenticate_slow(self, key: str, raw_digest: bytes) -> Principal:
        reason = self._denied.get(raw_digest)
        if reason is not None:
            raise InvalidCredentials(reason)
        if not keys.is_well_formed(key):
            raise InvalidCredentials("malformed")  # not cached: rejecting is already cheap
        task = self._inflight.get(raw_digest)
        if task is None:
            task = asyncio.ensure_future(self._lookup(raw_digest))
            task.add_done_callback(_mark_retrieved)
            self._inflight[raw_digest] = task
        # shield: a caller that goes away must not cancel the lookup others wait on.
        outcome = await asyncio.shield(task)
        if isinstance(outcome, Principal):
            return outcome
        raise InvalidCredentials(outcome)

    async def _lookup(self, raw_digest: bytes) -> Principal | FailureReason:
        try:
            async with self._lookups:
                hex_digest = raw_digest.hex()
                try:
                    record = await self._repo.find_key(hex_digest)
                except RepositoryUnavailable:
                    raise
                except Exception as exc:  # an adapter bug must still fail closed, as a 503
                    raise RepositoryUnavailable("user repository lookup failed") from exc
            if record is None or not keys.same_digest(record.key_digest, hex_digest):
                self._denied.put(raw_digest, "unknown")
                return "unknown"
            if not record.enabled:
                self._denied.put(raw_digest, "disabled")
                return "disabled"
            self._valid.put(raw_digest, record.principal)
            return record.principal
        finally:
            self._inflight.pop(raw_digest, None)

    @property
    def cached_entries(self) -> int:
        """Cached answers (found and not found), e.g. for a gauge; bounded by construction."""
        return len(self._valid) + len(self._denied)

    async def ready(self) -> bool:
        """True when the repository answers (for ``/readyz``)."""
        try:
            await self._repo.ping()
        except RepositoryUnavailable:
            return False
        return True

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await self._repo.close()


def _mark_retrieved(task: asyncio.Task[Principal | FailureReason]) -> None:
    # Every waiter may have gone away; reading the exception keeps asyncio quiet about it.
    if not task.cancelled():
        task.exception()
