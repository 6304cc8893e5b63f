"""``python -m bench --profile``: py-spy on a sidecar row under wrk load.

The row is the one ``--targets`` names, else ``sidecar-otlp`` (every feature on, spans
exported: the configuration users run); the export thread's samples count too.

Writes a flame graph (SVG), a speedscope file and the collapsed stacks under
bench/profiles/, and prints where the samples went: by function (self and inclusive) and
by library, which is what the hot-path work needs first.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from bench.measure import Plan, load, warm_up
from bench.procs import exclusive, fresh_workdir
from bench.stage import stage

_PROJECT = ("proxy", "auth", "bench")
# A sample with no Python frame at all: uvloop's C loop, syscalls, the C HTTP parser.
NATIVE = "<native: event loop and C code, no Python frame>"
_SITE = "site-packages/"


def ensure_py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if Path(found).exists():
        return found
    print("bench: installing py-spy into this virtualenv (pip install py-spy)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(Path(sys.executable).with_name("py-spy"))


def parse_collapsed(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """py-spy ``--format raw`` lines: ``frame;frame;...;leaf count``."""
    stacks = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        frames, _, count = line.rpartition(" ")
        stacks.append((frames.split(";") if frames else [NATIVE], int(count)))
    return stacks


def _path(frame: str) -> str:
    return frame[frame.rfind("(") + 1 :].rstrip(")").rsplit(":", 1)[0]


def library_of(frame: str) -> str:
    """Who owns a frame ``func (/full/path/file.py:line)``: a distribution, the project,
    or the standard library. C code (uvloop, the HTTP parser, syscalls) has no frame of its
    own: its time lands on the Python frame that called it."""
    if frame == NATIVE:
        return "native"
    path = _path(frame)
    if _SITE in path:
        return path.split(_SITE, 1)[1].split("/", 1)[0].removesuffix(".py")
    for project in _PROJECT:
        if f"/{project}/" in path or path.startswith(f"{project}/"):
            return project
    if path.startswith("<frozen"):
        return "stdlib"
    parts = path.split("/")
    for index, part in enumerate(parts[:-1]):
        if part.startswith("python3"):
            return "stdlib:" + parts[index + 1].removesuffix(".py")
    return "other"


def function_of(frame: str) -> str:
    """The frame without its line number, so one function's lines add up."""
    head, sep, tail = frame.rpartition(":")
    return head + ")" if sep and tail.rstrip(")").isdigit() else frame


def short(frame: str) -> str:
    """The frame with its path cut after site-packages/ or the project root."""
    path = _path(frame)
    cut = path.split(_SITE, 1)[1] if _SITE in path else path
    if "/lib/python3" in cut:  # the standard library: keep what follows lib/python3.X/
        cut = cut.split("/lib/python3", 1)[1].split("/", 1)[-1]
    for project in _PROJECT:
        marker = f"/{project}/"
        if marker in cut:
            cut = project + "/" + cut.split(marker, 1)[1]
            break
    return frame.replace(path, cut)


def summarise_stacks(stacks: list[tuple[list[str], int]], top: int = 15) -> str:
    total = sum(count for _, count in stacks) or 1
    lines: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    for frames, count in stacks:
        lines[frames[-1]] += count
        own[function_of(frames[-1])] += count
        libraries[library_of(frames[-1])] += count
        for function in {function_of(frame) for frame in frames}:
            inclusive[function] += count

    def table(title: str, counter: Counter[str]) -> list[str]:
        rows = [f"### {title}", "", "| share | frame |", "| ---: | --- |"]
        for frame, n in counter.most_common(top):
            rows.append(f"| {100 * n / total:.1f}% | `{short(frame)}` |")
        return [*rows, ""]

    out = [
        f"{total:,} samples. Coroutines resumed by the loop have no caller frames, so "
        "inclusive shares are lower bounds.",
        "",
    ]
    out += table("self time by owner of the leaf frame (C code counts for its caller)", libraries)
    out += table("self time by function", own)
    out += table("inclusive time by function", inclusive)
    out += table("self time by line", lines)
    return "\n".join(out)


def _record(py_spy: str, pid: int, out: Path, fmt: str, seconds: float) -> None:
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds))]
    argv += ["--rate", "250", "--format", fmt, "--output", str(out), "--nonblocking"]
    if fmt == "raw":
        argv.append("--full-filenames")
    subprocess.run(argv, check=True, capture_output=True, timeout=seconds + 60)


def profile(
    out_dir: Path, workdir: Path, *, seconds: float, name: str = "sidecar-otlp", sse: bool = False
) -> int:
    with exclusive(workdir):
        return _profile(out_dir, workdir, seconds=seconds, name=name, sse=sse)


def _profile(out_dir: Path, workdir: Path, *, seconds: float, name: str, sse: bool) -> int:
    py_spy = ensure_py_spy()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-sse" if sse else "")
    plan = Plan()
    with stage(fresh_workdir(workdir, "profile"), [name], peers=False) as stage_:
        target = stage_.get(name)
        assert target is not None
        assert target.pid is not None
        warm_up(target, plan, stage_.bodies)
        outputs = {
            "flamegraph": out_dir / f"{name}-{stamp}.svg",
            "speedscope": out_dir / f"{name}-{stamp}.speedscope.json",
            "raw": out_dir / f"{name}-{stamp}.collapsed.txt",
        }
        for fmt, path in outputs.items():
            # wrk runs a little longer than py-spy, so every sample is taken under load.
            loader = threading.Thread(
                target=load,
                args=(target, plan, stage_.bodies, seconds + 2),
                kwargs={"stream": sse},
                daemon=True,
            )
            loader.start()
            time.sleep(1)
            _record(py_spy, target.pid, path, fmt, seconds)
            loader.join()
    summary = summarise_stacks(parse_collapsed(outputs["raw"].read_text().splitlines()))
    summary_path = out_dir / f"{name}-{stamp}.summary.md"
    summary_path.write_text(f"# py-spy profile of the sidecar under load ({stamp})\n\n{summary}")
    print(summary)
    for path in (*outputs.values(), summary_path):
        print(f"bench: wrote {path}", file=sys.stderr)
    return 0
