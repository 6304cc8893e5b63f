"""The interpreter the sidecar rows run on: the image's dependencies, nothing more.

The development venv also holds the test and lint tools, and some of them change what
the sidecar imports (``rich``, pulled in by import-linter, makes structlog load it and
``pygments``: ~60 modules and several MB of RSS). So the benchmark builds
``bench/.image-venv`` the way the Dockerfile's build stage does, from
``requirements.lock`` with ``--no-deps``, and installs this tree into it in editable
mode, so the code measured is the working tree's.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE_VENV = ROOT / "bench" / ".image-venv"
LOCK = ROOT / "requirements.lock"


def image_python(venv: Path = IMAGE_VENV) -> str:
    """The venv's python, (re)built when the lock or the project metadata changed."""
    python = venv / "bin" / "python"
    stamp = venv / ".lock-sha256"
    wanted = hashlib.sha256(LOCK.read_bytes() + (ROOT / "pyproject.toml").read_bytes())
    if python.exists() and stamp.exists() and stamp.read_text() == wanted.hexdigest():
        return str(python)
    print(f"bench: building {venv} from requirements.lock (once)", file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", "-r", str(LOCK)], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    stamp.write_text(wanted.hexdigest())
    return str(python)
