"""The fast fake upstream: nginx answering from its config, no files, no upstream of its own.

Every path answers the fixed chat completion; a request with ``X-Bench-Stream: 1`` gets the
static SSE body instead (nginx cannot choose by request body, and every proxy under test
forwards that header unchanged).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.payloads import CHAT_REPLY, static_sse_body
from bench.procs import Child


def nginx_string(raw: bytes) -> str:
    """Quote bytes as one nginx single-quoted string (its parser turns ``\\n`` into LF)."""
    text = raw.decode()
    text = text.replace("\\", "\\\\").replace("'", "\\'")
    return "'" + text.replace("\n", "\\n") + "'"


def render_config(prefix: Path, port: int, *, as_root: bool) -> str:
    """A one-worker nginx config serving the canned replies on 127.0.0.1:``port``."""
    temp = {name: prefix / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    user = "user root;\n" if as_root else ""
    return f"""{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            if ($http_x_bench_stream) {{ rewrite ^ /__bench_sse last; }}
            default_type application/json;
            return 200 {nginx_string(CHAT_REPLY)};
        }}
        location = /__bench_sse {{
            internal;
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            return 200 {nginx_string(static_sse_body())};
        }}
    }}
}}
"""


def ensure_debian_packages(*packages: str) -> list[str]:
    """apt-get install what is missing (as root); returns what is still missing."""
    missing = [p for p in packages if shutil.which(p) is None and not _sbin(p)]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"bench: installing Debian packages: {' '.join(missing)}", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        quiet = subprocess.DEVNULL
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, stdout=quiet)
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
        subprocess.run(install, check=False, env=env, stdout=quiet)
    return [p for p in packages if shutil.which(p) is None and not _sbin(p)]


def _sbin(program: str) -> str | None:
    path = Path("/usr/sbin") / program
    return str(path) if path.exists() else None


def nginx_binary() -> str | None:
    return shutil.which("nginx") or _sbin("nginx")


def nginx_child(workdir: Path, port: int, cpu: str | None) -> Child:
    """An nginx child (not started) with its own prefix under ``workdir``."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    prefix = workdir / f"nginx-{port}"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render_config(prefix, port, as_root=os.geteuid() == 0))
    argv = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return Child("nginx", argv, prefix / "stdout.log", cpu=cpu)
