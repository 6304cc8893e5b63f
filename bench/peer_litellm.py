"""LiteLLM proxy as a peer: its own venv under bench/, one worker, pointed at nginx."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bench.procs import Child, free_port
from bench.targets import CHAT_PATH, UPSTREAM_KEY, Target

PEERS_VENV = Path(__file__).resolve().parent / ".peers-venv"
MASTER_KEY = "sk-bench-litellm-master"


def ensure_litellm(venv: Path = PEERS_VENV) -> Path:
    """The ``litellm`` script of the peers venv, creating and filling the venv if needed."""
    script = venv / "bin" / "litellm"
    if script.exists():
        return script
    print(f"bench: installing LiteLLM proxy into {venv} (once; a few minutes)", file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--disable-pip-version-check", "litellm[proxy]"], check=True)
    return script


def litellm_version(venv: Path = PEERS_VENV) -> str:
    dists = list((venv / "lib").glob("python3*/site-packages"))
    for found in metadata.distributions(path=[str(d) for d in dists]):
        if found.metadata["Name"] == "litellm":
            return found.version
    return "unknown"


def render_config(nginx_port: int) -> str:
    """One OpenAI-compatible model on the fake upstream; the master key guards the proxy."""
    return f"""model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:{nginx_port}/v1
      api_key: {UPSTREAM_KEY}
general_settings:
  master_key: {MASTER_KEY}
"""


def litellm(workdir: Path, nginx_port: int, cpu: str) -> Target:
    script = ensure_litellm()
    config = workdir / "litellm.yaml"
    config.write_text(render_config(nginx_port))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LITELLM_"))}
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": MASTER_KEY})
    argv = [str(script), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", "1"]
    child = Child("litellm", argv, workdir / "litellm.log", env=env, cpu=cpu).start()
    child.wait_ready(f"http://127.0.0.1:{port}/health/liveliness", timeout=180)
    return Target(
        name="litellm",
        label=f"LiteLLM proxy {litellm_version()}, 1 worker",
        url=f"http://127.0.0.1:{port}{CHAT_PATH}",
        key=MASTER_KEY,
        child=child,
        # LiteLLM asks the upstream for SSE itself and would not pass X-Bench-Stream on.
        streams=False,
    )
