"""Fan one ``Observer`` call out to several (metrics, access log, ...)."""

from __future__ import annotations

from collections.abc import Sequence

from proxy.core.exchange import Exchange
from proxy.core.ports import Observer


class CompositeObserver:
    __slots__ = ("_finished", "_first_byte", "_started")

    def __init__(self, observers: Sequence[Observer]) -> None:
        # Bound methods captured once: the per-request loop is then plain calls.
        self._started = tuple(o.upstream_started for o in observers)
        self._first_byte = tuple(o.first_byte for o in observers)
        self._finished = tuple(o.request_finished for o in observers)

    def upstream_started(self, exchange: Exchange) -> None:
        for call in self._started:
            call(exchange)

    def first_byte(self, exchange: Exchange) -> None:
        for call in self._first_byte:
            call(exchange)

    def request_finished(self, exchange: Exchange) -> None:
        for call in self._finished:
            call(exchange)
