"""The stage: fake upstreams and every target, started pinned, stopped on exit."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import targets as t
from bench.measure import Bodies
from bench.payloads import request_body
from bench.procs import HELPER_CPU, PROXY_CPU, Child, cpu_count, free_port
from bench.upstream_nginx import ensure_debian_packages, nginx_child

ALL_TARGETS = ("direct", "passthrough", "sidecar-otlp", "sidecar", "sidecar-notrace")
SIDECARS = ("sidecar", "sidecar-otlp", "sidecar-notrace", *t.FEATURE_TARGETS)
# The project's one aiohttp fake upstream, in bench mode (tests/support/fake_upstream_bench.py).
# Run, never imported: the bench imports nothing from tests/. Like bench/ itself, tests/ is
# found from the repo root, the working directory the child inherits from `python -m bench`.
FAKE_UPSTREAM = (sys.executable, "-m", "tests.support.fake_upstream")


@dataclass
class Stage:
    workdir: Path
    bodies: Bodies
    targets: list[t.Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    upstream: str = "nginx"
    otlp_receiver: str | None = None

    def get(self, name: str) -> t.Target | None:
        return next((x for x in self.targets if x.name == name), None)


def pin_self() -> None:
    """The harness (SSE probes included) shares the helper core with nginx and wrk."""
    if cpu_count() >= 2:
        os.sched_setaffinity(0, {int(HELPER_CPU)})


def _upstream(workdir: Path, stack: contextlib.ExitStack, notes: list[str]) -> tuple[int, str]:
    port = free_port()
    if not ensure_debian_packages("nginx"):
        child = nginx_child(workdir, port, HELPER_CPU)
        kind = "nginx"
    else:
        warning = "nginx unavailable: the JSON upstream is the aiohttp fake (slower, noisier)"
        print(f"bench: WARNING: {warning}", file=sys.stderr)
        notes.append(f"WARNING: {warning}.")
        argv = [*FAKE_UPSTREAM, "--port", str(port)]
        child = Child("fake-json", argv, workdir / "fake-json.log", cpu=HELPER_CPU)
        kind = "aiohttp fake"
    stack.callback(child.start().stop)
    child.wait_ready(f"http://127.0.0.1:{port}/")
    return port, kind


@contextlib.contextmanager
def stage(workdir: Path, names: list[str], *, peers: bool) -> Iterator[Stage]:
    """Everything running; yields the stage, stops every child on the way out."""
    if ensure_debian_packages("wrk"):
        raise SystemExit("bench: wrk is required (apt-get install wrk) and could not be installed")
    workdir.mkdir(parents=True, exist_ok=True)
    bodies = Bodies(workdir / "body.json", workdir / "body-stream.json")
    bodies.json.write_bytes(request_body(stream=False))
    bodies.stream.write_bytes(request_body(stream=True))
    with contextlib.ExitStack() as stack:
        notes: list[str] = []
        nginx_port, kind = _upstream(workdir, stack, notes)
        paced_port = free_port()
        argv = [*FAKE_UPSTREAM, "--port", str(paced_port)]
        paced = Child("paced-sse", argv, workdir / "paced.log", cpu=HELPER_CPU).start()
        stack.callback(paced.stop)
        paced.wait_ready(f"http://127.0.0.1:{paced_port}/")
        made = Stage(workdir, bodies, notes=notes, upstream=kind)

        def add(target: t.Target) -> None:
            made.targets.append(target)
            if target.child is not None:
                stack.callback(target.child.stop)

        if "direct" in names:
            add(t.direct(nginx_port, paced_port))
        if "passthrough" in names:
            add(t.passthrough(workdir, nginx_port, paced_port, PROXY_CPU))
        if set(SIDECARS) & set(names):
            traced = t.sidecar_environment(workdir, nginx_port, paced_port, tracing=True)
            key = t.create_key(traced)
            if "sidecar-otlp" in names:
                receiver, made.otlp_receiver = t.otlp_receiver(workdir, HELPER_CPU)
                stack.callback(receiver.stop)
                env = t.sidecar_environment(
                    workdir, nginx_port, paced_port, tracing=True, otlp=made.otlp_receiver
                )
                add(t.sidecar_otlp(workdir, env, key, PROXY_CPU))
            for tracing, name in ((True, "sidecar"), (False, "sidecar-notrace")):
                if name in names:
                    env = t.sidecar_environment(workdir, nginx_port, paced_port, tracing=tracing)
                    add(t.sidecar(workdir, env, key, PROXY_CPU, tracing=tracing))
            if "sidecar-noauth" in names:
                add(t.sidecar_noauth(workdir, traced, PROXY_CPU))
            if "sidecar-redis" in names:
                if t.redis_reachable():
                    add(t.sidecar_redis(workdir, traced, PROXY_CPU))
                else:
                    warning = f"no Redis at {t.REDIS_URL}: the sidecar-redis row is skipped"
                    print(f"bench: WARNING: {warning}", file=sys.stderr)
                    notes.append(f"WARNING: {warning}.")
        if peers:
            from bench.peer_litellm import litellm

            add(litellm(workdir, nginx_port, PROXY_CPU))
        yield made
