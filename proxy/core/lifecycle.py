"""Where the sidecar is in its life: set by the server that runs it, read by the proxy
(new requests get 503 ``draining``) and by ``/readyz`` (503 from the first signal on)."""

from __future__ import annotations


class Lifecycle:
    __slots__ = ("draining", "started", "stopping")

    def __init__(self) -> None:
        self.started = False
        """The adapters are up; ``/readyz`` answers 200 only after."""
        self.stopping = False
        """SIGTERM came: ``/readyz`` answers 503 while traffic is still served (pre-stop)."""
        self.draining = False
        """The pre-stop window ended: new requests get 503, in-flight ones finish."""
