"""The soak's own PostgreSQL and Redis: child processes on free ports, killed with SIGKILL.

Never the machine's shared servers: each service here is a fresh ``redis-server`` or a
fresh PostgreSQL cluster (``initdb`` into the soak's work directory) that only this run
knows about, so ``kill()`` can crash it without touching anyone else's tests.

``kill()`` is ``kill -9`` of the server's own pid (for PostgreSQL also of the postmaster's
children, by pid, as a crashed host would lose them); ``start()`` brings the service back
on the same port and data directory and returns once it answers. PostgreSQL keeps its
data across the crash (crash recovery replays the WAL); Redis comes back empty.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from bench.procs import process_state, process_tree
from tests.support.sidecar import free_port

READY_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.05
# PostgreSQL refuses to run as root; as root the soak runs it as this (existing) user.
POSTGRES_OS_USER = "postgres"


class ServiceError(RuntimeError):
    """A private service could not be set up or did not come back."""


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        # Gone, or a zombie waiting for init to reap it: either way, it has died.
        pids = [pid for pid in pids if process_state(pid) not in (None, "Z")]
        if pids:
            time.sleep(POLL_SECONDS)
    if pids:
        raise ServiceError(f"processes {pids} outlived SIGKILL")


@dataclass
class _Child:
    """One server process, with its log and the moments it was started, killed, ready."""

    name: ClassVar[str] = "service"
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    kills: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def _spawn(self, argv: list[str], **extra: Any) -> None:
        log: IO[bytes]
        with self.log_path.open("ab") as log:
            # A session of its own: a Ctrl-C meant for the soak must not reach the server.
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **extra
            )

    def _wait_ready(self, answers: Any) -> float:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServiceError(f"{self.name} exited at start; log:\n{self.log_tail()}")
            if answers():
                return time.monotonic()
            time.sleep(POLL_SECONDS)
        raise ServiceError(f"{self.name} not ready in time; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """``kill -9`` the server and every child it had; returns once all are gone."""
        if self.process is None or self.process.poll() is not None:
            raise ServiceError(f"{self.name} is not running")
        children = process_tree(self.process.pid)[1:]  # every descendant, not only children
        os.kill(self.process.pid, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(ProcessLookupError):  # it may have exited already
                os.kill(child, signal.SIGKILL)
        self.process.wait(10)
        _wait_gone(children, 10)
        self.kills += 1

    def stop(self) -> None:
        """A clean shutdown at the end of the run (SIGTERM, then SIGKILL if it lingers)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class PrivateRedis(_Child):
    """A ``redis-server`` without persistence: a restart brings it back empty."""

    name: ClassVar[str] = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> float:
        """Start (or restart) on the same port; the monotonic time it answered PING."""
        server = shutil.which("redis-server")
        if server is None:
            raise ServiceError("redis-server is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [server, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self._spawn(argv)
        return self._wait_ready(self._pong)

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def postgres_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin that has ``initdb``."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if not found:
        raise ServiceError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


@dataclass
class PrivatePostgres(_Child):
    """A one-run PostgreSQL cluster (trust auth, ``fsync=off``), its socket in its workdir."""

    name: ClassVar[str] = "postgres"
    bindir: Path = field(default_factory=postgres_bindir)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    def _as_server_user(self) -> dict[str, Any]:
        """Popen arguments that drop root for the server (PostgreSQL refuses to run as root)."""
        if os.geteuid() != 0:
            return {}
        return {"user": POSTGRES_OS_USER, "group": POSTGRES_OS_USER, "extra_groups": []}

    def init(self) -> None:
        """``initdb`` a fresh cluster into ``workdir/data``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.workdir, POSTGRES_OS_USER, POSTGRES_OS_USER)
        argv = [str(self.bindir / "initdb"), "-A", "trust", "-U", "postgres", "--no-sync"]
        argv += ["-D", str(self.datadir)]
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False, **self._as_server_user()
        )
        if done.returncode != 0:
            raise ServiceError(f"initdb failed: {done.stderr.strip()}")

    def start(self) -> float:
        """Start (or restart after a crash) on the same port and data; when it answered."""
        argv = [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port)]
        argv += ["-k", str(self.workdir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
        self._spawn(argv, **self._as_server_user())
        return self._wait_ready(self._accepts)

    def _accepts(self) -> bool:
        # pg_isready says "accepting" only once crash recovery is over.
        argv = [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        argv += ["-U", "postgres", "-d", "postgres", "-t", "1"]
        return subprocess.run(argv, check=False).returncode == 0
