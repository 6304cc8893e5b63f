"""``python -m proxy`` is ``llm-sidecar``."""

from proxy.entrypoints.cli import run

run()
