"""The sidecar subprocess leaves through a real forward proxy (tinyproxy), as configured by
HTTPS_PROXY / HTTP_PROXY / NO_PROXY, PROXY_URL and CA_FILE (ADR 0090)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import sidecar_env
from tests.support import leak_scan
from tests.support.fake_upstream import FakeUpstream
from tests.support.sidecar import SidecarProcess
from tests.support.tinyproxy import Tinyproxy

USER, PASSWORD = "egress", "Egress-Pass.e2e-0451"
WRONG = "Wrong-Pass.e2e-0452"
leak_scan.add_secret(PASSWORD)
leak_scan.add_secret(WRONG)
leak_scan.add_secret(f"{USER}:{PASSWORD}")


@pytest.fixture(scope="module")
def secure_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeUpstream, str]]:
    """The fake upstream over HTTPS (a trustme certificate for localhost), and its CA file."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    ca_file = tmp_path_factory.mktemp("egress-ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    fake = FakeUpstream(tls=context).start()
    yield fake, str(ca_file)
    fake.stop()


@pytest.fixture
def tinyproxy(tmp_path: Path, secure_upstream: tuple[FakeUpstream, str]) -> Iterator[Tinyproxy]:
    proxy = Tinyproxy(
        tmp_path / "proxy", connect_ports=(secure_upstream[0].port,), credentials=(USER, PASSWORD)
    ).start()
    yield proxy
    proxy.stop()


def _chat(sidecar: SidecarProcess, key: str, upstream: str, *, stream: bool = False) -> Any:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    request = urllib.request.Request(  # noqa: S310 - loopback only
        f"{sidecar.url}/{upstream}/v1/chat/completions",
        data=json.dumps({**body, "stream": stream}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        text = error.read()
        leak_scan.add_output("egress error body", text)
        return error.code, text


def _start(workdir: Path, fake: FakeUpstream, **env: str) -> tuple[SidecarProcess, str]:
    process = SidecarProcess(workdir, env=sidecar_env(fake, **env))
    process.workdir.mkdir(parents=True, exist_ok=True)
    key = process.create_user("acme", "alice", "--tpm", "100000000")
    return process.start(), key


def test_upstreams_leave_through_the_proxy_as_configured(
    tmp_path: Path,
    fake_upstream: FakeUpstream,
    secure_upstream: tuple[FakeUpstream, str],
    tinyproxy: Tinyproxy,
) -> None:
    """HTTPS goes through one kept-alive CONNECT tunnel, streams included; NO_PROXY and
    PROXY_URL=none go direct; an http upstream is asked for in absolute form."""
    secure, ca_file = secure_upstream
    proxy = tinyproxy.url(userinfo=f"{USER}:{PASSWORD.replace('.', '%2E')}")
    sidecar, key = _start(
        tmp_path / "sidecar",
        fake_upstream,
        HTTPS_PROXY=proxy,
        http_proxy=proxy,
        no_proxy=f"127.0.0.1:1,.example.com, 127.0.0.1:{secure.port}",
        LLM_SIDECAR_UPSTREAMS__SECURE__BASE_URL=f"https://localhost:{secure.port}",
        LLM_SIDECAR_UPSTREAMS__SECURE__CA_FILE=ca_file,
        LLM_SIDECAR_UPSTREAMS__BYPASS__BASE_URL=f"https://localhost:{secure.port}",
        LLM_SIDECAR_UPSTREAMS__BYPASS__CA_FILE=ca_file,
        LLM_SIDECAR_UPSTREAMS__BYPASS__PROXY_URL="none",
        LLM_SIDECAR_UPSTREAMS__LISTED__BASE_URL=f"https://127.0.0.1:{secure.port}",
        LLM_SIDECAR_UPSTREAMS__LISTED__CA_FILE=ca_file,
        LLM_SIDECAR_UPSTREAMS__PLAIN__BASE_URL=fake_upstream.url,
    )
    try:
        for _ in range(3):
            status, body = _chat(sidecar, key, "secure")
            assert status == 200, body
            assert json.loads(body)["object"] == "chat.completion"
        status, streamed = _chat(sidecar, key, "secure", stream=True)
        assert status == 200
        assert streamed.count(b"data: ") >= 3
        assert streamed.rstrip().endswith(b"data: [DONE]")
        assert tinyproxy.connects() == [f"CONNECT localhost:{secure.port} HTTP/1.1"]
        served = len(secure.received)
        assert _chat(sidecar, key, "bypass")[0] == 200  # PROXY_URL=none
        assert _chat(sidecar, key, "listed")[0] == 200  # NO_PROXY: 127.0.0.1:<port>
        assert len(secure.received) == served + 2
        assert tinyproxy.connects() == [f"CONNECT localhost:{secure.port} HTTP/1.1"]
        assert _chat(sidecar, key, "plain")[0] == 200
        assert tinyproxy.requests()[-1] == f"POST {fake_upstream.url}/v1/chat/completions HTTP/1.1"
    finally:
        assert sidecar.stop() == 0, sidecar.logs()
    logs = sidecar.logs()
    assert PASSWORD not in logs
    assert '"event":"egress_proxy"' in logs


def test_wrong_proxy_password_is_a_clean_502(
    tmp_path: Path,
    fake_upstream: FakeUpstream,
    secure_upstream: tuple[FakeUpstream, str],
    tinyproxy: Tinyproxy,
) -> None:
    """A refused proxy login is 502 egress_proxy_error; its password shows nowhere."""
    secure, ca_file = secure_upstream
    sidecar, key = _start(
        tmp_path / "sidecar",
        fake_upstream,
        LLM_SIDECAR_UPSTREAMS__SECURE__BASE_URL=f"https://localhost:{secure.port}",
        LLM_SIDECAR_UPSTREAMS__SECURE__CA_FILE=ca_file,
        LLM_SIDECAR_UPSTREAMS__SECURE__PROXY_URL=tinyproxy.url(userinfo=f"{USER}:{WRONG}"),
        LLM_SIDECAR_RETRY_MAX_ATTEMPTS="1",
    )
    try:
        served = len(secure.received)
        status, body = _chat(sidecar, key, "secure")
        config = sidecar.cli("check-config").stdout
    finally:
        assert sidecar.stop() == 0, sidecar.logs()
    assert status == 502
    error = json.loads(body)["error"]
    assert (error["code"], error["type"]) == ("egress_proxy_error", "server_error")
    assert len(secure.received) == served
    assert f"{USER}:***@127.0.0.1:{tinyproxy.port}" in config
    for output in (body.decode(), config, sidecar.logs()):
        assert WRONG not in output
    access = [line for line in sidecar.logs().splitlines() if '"event":"request"' in line]
    assert '"status":502' in access[-1]
