"""Which forward proxy an upstream uses: NO_PROXY rules, proxy URLs, settings (ADR 0090)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import orjson
import pytest
import trustme

from proxy.adapters.upstream_egress import ForwardProxy, NoProxy, egress_for, parse_proxy_url
from proxy.entrypoints.cli import main
from proxy.settings import SettingsError, load_settings
from tests.support import leak_scan

PROXY_PASSWORD = "proxy-s3cret-unit"
leak_scan.add_secret(PROXY_PASSWORD)


@pytest.mark.parametrize(
    ("rules", "host", "port", "direct"),
    [
        ("", "api.openai.com", 443, False),
        ("*", "api.openai.com", 443, True),
        ("api.openai.com", "api.openai.com", 443, True),
        ("API.OpenAI.com", "api.openai.COM.", 443, True),
        ("openai.com", "api.openai.com", 443, True),
        (".openai.com", "api.openai.com", 443, True),
        (".openai.com", "openai.com", 443, True),
        ("openai.com", "notopenai.com", 443, False),
        ("ai.com", "api.openai.com", 443, False),
        ("api.openai.com:443", "api.openai.com", 443, True),
        ("api.openai.com:8443", "api.openai.com", 443, False),
        ("localhost, 127.0.0.1", "127.0.0.1", 8080, True),
        ("10.0.0.0/8", "10.1.2.3", 80, True),
        ("10.0.0.0/8", "11.1.2.3", 80, False),
        ("10.0.0.0/8", "ten.example", 80, False),
        ("::1", "::1", 443, True),
        ("[::1]:443", "[::1]", 443, True),
        ("[::1]:443", "::1", 80, False),
        ("fd00::/8", "fd00::5", 443, True),
        ("example.com api.groq.com", "api.groq.com", 443, True),
        (" , ,", "api.groq.com", 443, False),
    ],
)
def test_no_proxy_rules(rules: str, host: str, port: int, direct: bool) -> None:
    """NO_PROXY matches hosts, domain suffixes, host:port, IPs, CIDR ranges and '*'."""
    assert NoProxy(rules).matches(host, port) is direct


def test_proxy_url_parsing() -> None:
    """Credentials (percent-decoded) become a Basic value that repr never shows."""
    proxy = parse_proxy_url(f"http://us%40er:{PROXY_PASSWORD.replace('-', '%2D')}@proxy:3128/")
    expected = base64.b64encode(f"us@er:{PROXY_PASSWORD}".encode()).decode()
    assert proxy == ForwardProxy("proxy", 3128, f"Basic {expected}")
    assert PROXY_PASSWORD not in repr(proxy)
    assert expected not in repr(proxy)
    assert parse_proxy_url("proxy.corp:8080") == ForwardProxy("proxy.corp", 8080)
    assert parse_proxy_url("http://proxy.corp") == ForwardProxy("proxy.corp", 80)
    for scheme, rest in [
        ("https", ":3128"),
        ("socks5", ":1080"),
        ("http", ":99999"),
        ("http", "/x"),
    ]:
        with pytest.raises(ValueError, match="must") as refused:
            parse_proxy_url(f"{scheme}://u:{PROXY_PASSWORD}@proxy{rest}")
        assert PROXY_PASSWORD not in str(refused.value)
    with pytest.raises(ValueError, match="with a host"):
        parse_proxy_url("http://")


def test_resolution_order() -> None:
    """PROXY_URL wins ('none': direct), else the scheme's variable unless NO_PROXY matches."""
    env = {
        "HTTPS_PROXY": "http://upper:3128",
        "https_proxy": "http://lower:3128",
        "HTTP_PROXY": "http://plain:3128",
        "NO_PROXY": ".internal",
    }
    assert egress_for("https://api.openai.com", None, env).proxy == ForwardProxy("lower", 3128)
    assert egress_for("http://vllm:8000", None, env).proxy == ForwardProxy("plain", 3128)
    assert egress_for("https://llm.internal", None, env).proxy is None
    assert egress_for("https://llm.internal", "http://own:1", env).proxy == ForwardProxy("own", 1)
    assert egress_for("https://api.openai.com", "NONE", env).proxy is None
    assert egress_for("https://api.openai.com", None, {}).proxy is None
    assert egress_for("https://api.openai.com", None, {"HTTPS_PROXY": ""}).proxy is None
    assert egress_for("http://a", None, {"HTTPS_PROXY": "http://p:1"}).proxy is None


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("LLM_SIDECAR_", "OPENAI_API_KEY", "GROQ_API_KEY")) or name.upper() in (
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "NO_PROXY",
        ):
            monkeypatch.delenv(name)
    return monkeypatch


def _problems(env: pytest.MonkeyPatch, **variables: str) -> list[str]:
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    return refused.value.problems


def test_ca_file_is_checked_at_start(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A missing or non-PEM CA_FILE stops the start, naming the variable; a good one loads."""
    missing = _problems(clean_env, LLM_SIDECAR_UPSTREAMS__OPENAI__CA_FILE=str(tmp_path / "no.pem"))
    assert missing[0].startswith("LLM_SIDECAR_UPSTREAMS__OPENAI__CA_FILE: ")
    (tmp_path / "junk.pem").write_text("not a certificate")
    junk = _problems(clean_env, LLM_SIDECAR_UPSTREAMS__OPENAI__CA_FILE=str(tmp_path / "junk.pem"))
    assert junk[0].startswith("LLM_SIDECAR_UPSTREAMS__OPENAI__CA_FILE: ")
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    clean_env.setenv("LLM_SIDECAR_UPSTREAMS__OPENAI__CA_FILE", str(tmp_path / "ca.pem"))
    assert load_settings().upstreams["openai"].ca_file == str(tmp_path / "ca.pem")


def test_bad_proxy_settings_name_their_variable(clean_env: pytest.MonkeyPatch) -> None:
    """A bad PROXY_URL or HTTPS_PROXY stops the start; the password is never quoted."""
    bad = f"https://u:{PROXY_PASSWORD}@proxy:3128"
    problems = _problems(clean_env, HTTPS_PROXY=bad)  # used by openai and groq: said once
    problems += _problems(clean_env, LLM_SIDECAR_UPSTREAMS__GROQ__PROXY_URL=bad)
    assert [p.split(":")[0] for p in problems] == [
        "HTTPS_PROXY",
        "LLM_SIDECAR_UPSTREAMS__GROQ__PROXY_URL",
    ]
    assert not any(PROXY_PASSWORD in problem for problem in problems)


def test_check_config_masks_the_proxy_password(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config shows a PROXY_URL with its password masked (also inside ENDPOINTS)."""
    url = f"http://egress:{PROXY_PASSWORD}@proxy.corp:3128"
    clean_env.setenv("LLM_SIDECAR_UPSTREAMS__OPENAI__PROXY_URL", url)
    clean_env.setenv(
        "LLM_SIDECAR_UPSTREAMS__VLLM__ENDPOINTS",
        orjson.dumps([{"base_url": "http://vllm:8000", "proxy_url": url}]).decode(),
    )
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert PROXY_PASSWORD not in out
    shown = orjson.loads(out)["upstreams"]
    assert shown["openai"]["proxy_url"] == "http://egress:***@proxy.corp:3128"
    assert shown["vllm"]["endpoints"][0]["proxy_url"] == "http://egress:***@proxy.corp:3128"
