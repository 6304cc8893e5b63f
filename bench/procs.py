"""Child processes of the harness: start pinned, wait until they listen, read /proc, stop."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands to ``bind(0)`` and to outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_FLOOR = _ephemeral_floor()
_handed_out: set[int] = set()
_draw = random.SystemRandom()  # not the module's generator, which tests may seed


def free_port() -> int:
    """A loopback port for a child process to listen on, free when asked.

    Drawn below the kernel's ephemeral range: between this check and the child's bind,
    an outgoing connection or another ``bind(0)`` could otherwise take it (seen as
    ``address already in use`` on a busy machine). Never the same port twice per process.
    """
    low = 20000 if _EPHEMERAL_FLOOR > 21000 else 1024
    for _ in range(200):
        port = _draw.randrange(low, _EPHEMERAL_FLOOR)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # an unusual range: whatever the kernel picks
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


# Read once at import, before the harness pins itself to the helper core: children are
# pinned explicitly from this set, never by inheriting the harness's own affinity.
ALLOWED_CPUS = tuple(sorted(os.sched_getaffinity(0)))
PROXY_CPU = str(ALLOWED_CPUS[0])
HELPER_CPU = str(ALLOWED_CPUS[1]) if len(ALLOWED_CPUS) > 1 else PROXY_CPU


def cpu_count() -> int:
    return len(ALLOWED_CPUS)


def pinned(argv: Sequence[str], cpu: str | None) -> list[str]:
    """Prefix ``taskset -c`` when there is a core to pin to (always, when there are two:
    a child would otherwise inherit the harness's helper-core affinity)."""
    if cpu is None or cpu_count() < 2:
        return list(argv)
    return ["taskset", "-c", cpu, *argv]


def parse_stat_cpu_ticks(stat_line: str) -> int:
    """utime + stime (clock ticks) from one /proc/<pid>/stat line.

    The command name (field 2) may hold spaces and parentheses, so split after its last ')'.
    """
    rest = stat_line[stat_line.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(rest[11]) + int(rest[12])


def parse_stat_ppid(stat_line: str) -> int:
    return int(stat_line[stat_line.rindex(")") + 2 :].split()[1])


def process_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (``Z``: a zombie, dead but not yet reaped, so
    still in /proc); ``None`` once the process is gone."""
    stat = _read(f"/proc/{pid}/stat")
    return stat[stat.rindex(")") + 2 :].split()[0] if stat else None


def parse_statm_rss_kib(statm: str) -> int:
    return int(statm.split()[1]) * PAGE_KIB


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (LiteLLM and uvicorn may fork workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        if stat:
            parents.setdefault(parse_stat_ppid(stat), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    ticks = 0
    for member in process_tree(pid):
        stat = _read(f"/proc/{member}/stat")
        if stat:
            ticks += parse_stat_cpu_ticks(stat)
    return ticks / CLK_TCK


def rss_kib(pid: int) -> int:
    """Resident set size of one process (0 once it is gone)."""
    statm = _read(f"/proc/{pid}/statm")
    return parse_statm_rss_kib(statm) if statm else 0


def peak_rss_kib(pid: int) -> int:
    """Peak resident set size (VmHWM) of one process (0 once it is gone): what a burst cost
    even after the memory went back, which a later ``rss_kib`` would miss."""
    status = _read(f"/proc/{pid}/status") or ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    """File descriptors one process holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def tree_rss_mib(pid: int) -> float:
    return sum(rss_kib(member) for member in process_tree(pid)) / 1024


def settle(pids: Sequence[int], *, timeout: float = 30.0, busy: float = 0.05) -> float:
    """Wait until the processes use under ``busy`` of a core (a slow proxy still working
    through the last load's backlog would steal the next measurement's core); returns
    the seconds waited."""
    started = time.monotonic()
    if not pids:
        return 0.0
    while time.monotonic() - started < timeout:
        before = sum(tree_cpu_seconds(pid) for pid in pids)
        time.sleep(0.2)
        if sum(tree_cpu_seconds(pid) for pid in pids) - before < 0.2 * busy:
            break
    return time.monotonic() - started


def http_status(url: str, headers: Mapping[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 - loopback
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@dataclass
class Child:
    """One pinned child process whose output goes to a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cpu: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} not started"
        return self.process.pid

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                pinned(self.argv, self.cpu),
                env=dict(self.env) if self.env is not None else None,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, url: str, timeout: float = 60.0, ok: tuple[int, ...] = (200,)) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {self.log_path}")
            if http_status(url) in ok:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # The child leads its own session: signal its group so forked workers go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextlib.contextmanager
def exclusive(root: Path) -> Iterator[None]:
    """One benchmark at a time on this machine: two runs would measure each other."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "bench.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("bench: another benchmark run holds the lock; waiting", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def fresh_workdir(root: Path, prefix: str) -> Path:
    """A new run directory; older ones go (only the last run's logs are kept: the JSON
    access log alone is tens of MB). Call it while holding ``exclusive``."""
    for old in root.glob("run-*"):
        shutil.rmtree(old, ignore_errors=True)
    for old in root.glob("profile-*"):
        shutil.rmtree(old, ignore_errors=True)
    return root / time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
