"""A small TTL cache with a size bound, for key lookups.

Every entry lives exactly ``ttl`` seconds and entries are appended in time order,
so the oldest entry is always first: eviction (expired first, then oldest past
``max_entries``) pops from the front in O(1), and a flood of distinct keys can
never grow memory past the bound.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Map ``K -> V`` whose entries expire ``ttl`` seconds after they were put."""

    __slots__ = ("_clock", "_entries", "_max_entries", "_ttl")

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float]) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The live value for ``key``, or ``None`` (missing or expired)."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    def put(self, key: K, value: V) -> None:
        now = self._clock()
        entries = self._entries
        entries.pop(key, None)  # re-insert at the back so time order holds
        while entries:
            oldest = next(iter(entries.values()))
            if oldest[0] > now and len(entries) < self._max_entries:
                break
            entries.popitem(last=False)
        entries[key] = (now + self._ttl, value)

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
