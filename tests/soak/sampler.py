"""Resource samples of one process (``/proc``, through ``bench.procs``), and the
least-squares line through them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from statistics import median

from bench.procs import open_fds, rss_kib


@dataclass(frozen=True)
class Sample:
    """One reading: seconds since the load started, resident set size, open descriptors."""

    at_seconds: float
    rss_kib: int
    fds: int


def read_sample(pid: int, at_seconds: float) -> Sample:
    """The process's resident set and open descriptors, read as the benchmark reads them."""
    return Sample(at_seconds, rss_kib(pid), open_fds(pid))


@dataclass(frozen=True)
class Trend:
    """A series summarised: its fitted slope per minute and where it started, ended, peaked.

    ``start`` and ``end`` are medians of the first and last three samples, so one reading
    taken while a burst of connections happened to be open does not decide the verdict.
    """

    slope_per_minute: float
    start: float
    end: float
    maximum: float
    span_minutes: float

    @property
    def growth(self) -> float:
        return self.end - self.start

    @property
    def fitted_rise(self) -> float:
        """How much the fitted line climbs from the first sample to the last."""
        return self.slope_per_minute * self.span_minutes


def least_squares_slope(xs: list[float], ys: list[float]) -> float:
    """Slope of the ordinary least-squares line through the points (0 for fewer than 2)."""
    if len(xs) < 2:
        return 0.0
    mean_x = sum(xs) / len(xs)
    mean_y = sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def trend(samples: list[Sample], value: str) -> Trend:
    """The trend of ``value`` (``"rss_kib"`` or ``"fds"``) over the samples, per minute."""
    if not samples:
        raise ValueError("no samples to fit: the run was shorter than its warm-up")
    minutes = [s.at_seconds / 60 for s in samples]
    ys = [float(getattr(s, value)) for s in samples]
    edge = min(3, len(ys))
    return Trend(
        slope_per_minute=least_squares_slope(minutes, ys),
        start=median(ys[:edge]),
        end=median(ys[-edge:]),
        maximum=max(ys),
        span_minutes=minutes[-1] - minutes[0],
    )


def sockets_to_port(pid: int, port: int) -> int:
    """How many of the process's descriptors are TCP connections whose remote port is ``port``.

    Matches the socket inodes behind /proc/<pid>/fd with /proc/<pid>/net/tcp{,6}, whose
    rows hold ``remote_address:port`` (hex) in the third column and the inode in the tenth.
    """
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    wanted = f"{port:04X}"
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as rows:
                next(rows)  # header
                for row in rows:
                    fields = row.split()
                    if fields[2].rsplit(":", 1)[1] == wanted and fields[9] in inodes:
                        count += 1
        except FileNotFoundError:
            continue
    return count
