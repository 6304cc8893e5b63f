"""The Dockerfile without a Docker engine: hadolint, its pins, and its build-stage RUN
steps replayed against a fresh virtualenv (wheel built, lock installed, CLI run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), " ".join(rest.split())))
    return pairs


def lock_pins() -> dict[str, str]:
    """requirements.lock as {canonical name: version}; every line must be ``name==version``."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"not pinned: {line}"
            assert re.fullmatch(r"[\w.]+", version), f"not an exact version: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def test_hadolint_is_clean() -> None:
    """hadolint (failure threshold: style, from .hadolint.yaml) finds nothing."""
    result = subprocess.run(
        [HADOLINT, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_an_unpinned_base(tmp_path: Path) -> None:
    """The lint step can fail: a ``latest`` base image is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("python:3.12.12-slim-bookworm", "python:latest"))
    result = subprocess.run(
        [HADOLINT, "--config", ROOT / ".hadolint.yaml", bad], capture_output=True, check=False
    )
    assert result.returncode != 0


def test_image_shape() -> None:
    """Pinned 3.12 slim base in both stages, non-root, exec-form entrypoint, ports, data dir."""
    steps = instructions()
    bases = [args.split()[0] for word, args in steps if word == "FROM"]
    assert len(bases) == 2
    assert all(
        re.fullmatch(r"python:3\.12\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", b) for b in bases
    )
    final = steps[[i for i, (word, _) in enumerate(steps) if word == "FROM"][-1] :]
    assert ("USER", "10001:10001") in final
    assert ("ENTRYPOINT", '["llm-sidecar"]') in final
    assert ("CMD", '["serve"]') in final
    assert ("EXPOSE", "8080 9464") in final
    assert ("VOLUME", '["/var/lib/llm-sidecar"]') in final
    env = " ".join(args for word, args in final if word == "ENV")
    assert "LLM_SIDECAR_DATABASE_URL=sqlite:////var/lib/llm-sidecar/users.db" in env
    assert "LLM_SIDECAR_HOST" not in env  # loopback default: a sidecar serves its own pod
    copies = [args for word, args in final if word == "COPY"]
    assert copies == ["--from=build /opt/llm-sidecar /opt/llm-sidecar"]  # no sources, no tools


def test_lock_pins_every_runtime_dependency() -> None:
    """Each [project].dependencies entry is pinned in the lock at a version it accepts."""
    pins = lock_pins()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for line in declared:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({"sys_platform": "linux"}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a dependency but not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), line


def _python312() -> str:
    """A CPython 3.12 like the image's, else this interpreter."""
    found = shutil.which("python3.12")
    candidates = [found] if found else []
    candidates += sorted(
        str(p) for p in Path("~/.pyenv/versions").expanduser().glob("3.12*/bin/python3.12")
    )
    for candidate in candidates:
        if subprocess.run([candidate, "-c", ""], capture_output=True, check=False).returncode == 0:
            return candidate
    return sys.executable


def test_build_stage_steps_install_a_working_cli(tmp_path: Path) -> None:
    """The build stage's RUN lines, replayed on a copy of the build context, give a venv
    whose ``pip check`` passes and whose ``llm-sidecar`` answers ``--help``."""
    if not (ROOT / "proxy" / "entrypoints" / "cli.py").exists():
        pytest.skip("the CLI (proxy/entrypoints/cli.py) has not landed yet")
    context = tmp_path / "src"
    context.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.lock"):
        shutil.copy(ROOT / name, context / name)
    for package in ("proxy", "auth"):
        shutil.copytree(
            ROOT / package, context / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "python").symlink_to(_python312())
    venv, wheels = tmp_path / "venv", tmp_path / "wheels"
    steps = instructions()
    build_stage = steps[: [i for i, (word, _) in enumerate(steps) if word == "FROM"][1]]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))},
        "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    for word, args in build_stage:
        if word != "RUN":
            continue
        command = args.replace("/opt/llm-sidecar", str(venv))
        command = command.replace("/tmp/wheels", str(wheels))  # noqa: S108 (the Dockerfile's)
        result = subprocess.run(
            ["sh", "-ec", command],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, (
            f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    for argv in (["--help"], ["inject-webhook", "--help"]):
        result = subprocess.run(
            [venv / "bin" / "llm-sidecar", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "usage: llm-sidecar" in result.stdout
    assert not (venv / "bin" / "pip").exists()  # the image ships no installer
