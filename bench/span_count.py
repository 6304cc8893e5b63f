"""Spans exported against requests served, for the sidecar row that exports over OTLP/HTTP."""

from __future__ import annotations

import urllib.request

import orjson

from bench.targets import Target
from bench.verdicts import SpansExported


def _requests_served(admin_url: str) -> int:
    """The sum of ``llm_sidecar_requests_total`` over every label set."""
    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as reply:  # noqa: S310 - loopback
        text = reply.read().decode()
    return round(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("llm_sidecar_requests_total{")
        )
    )


def count_exported(target: Target, receiver_url: str) -> SpansExported:
    """Stop the target (its shutdown flushes the export queue), then read the receiver."""
    assert target.admin_url is not None
    assert target.child is not None
    served = _requests_served(target.admin_url)
    target.child.stop(timeout=30.0)
    with urllib.request.urlopen(receiver_url + "/counts", timeout=10) as reply:  # noqa: S310
        counts = orjson.loads(reply.read())
    return SpansExported(served, counts["server"], counts["client"])
