"""Settings: built-in upstreams, added upstreams, and fail-fast errors naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proxy.settings import SettingsError, load_settings


def _load(monkeypatch: pytest.MonkeyPatch, **env: str):  # type: ignore[no-untyped-def]
    for name in list(__import__("os").environ):
        if name.startswith(("LLM_SIDECAR_", "OPENAI_API_KEY", "GROQ_API_KEY")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_builtins_and_provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """openai and groq exist by default and take OPENAI_API_KEY / GROQ_API_KEY."""
    settings = _load(monkeypatch, OPENAI_API_KEY="sk-a", GROQ_API_KEY="gsk_b")
    assert settings.upstreams["openai"].base_url == "https://api.openai.com"
    assert settings.upstreams["groq"].openai_path == "/openai/v1"
    key = settings.upstreams["groq"].api_key
    assert key is not None
    assert key.get_secret_value() == "gsk_b"
    assert "gsk_b" not in repr(settings)


def test_any_openai_compatible_upstream_can_be_added(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new upstream needs only a base URL; explicit keys win over the env fallbacks."""
    settings = _load(
        monkeypatch,
        LLM_SIDECAR_UPSTREAMS__VLLM__BASE_URL="http://vllm:8000/",
        LLM_SIDECAR_UPSTREAMS__OPENAI__API_KEY="sk-explicit",
        OPENAI_API_KEY="sk-env",
    )
    assert settings.upstreams["vllm"].base_url == "http://vllm:8000"
    key = settings.upstreams["openai"].api_key
    assert key is not None
    assert key.get_secret_value() == "sk-explicit"


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("LLM_SIDECAR_PORT", "70000", "less than or equal to 65535"),
        ("LLM_SIDECAR_LOG_LEVEL", "loud", "Input should be"),
        ("LLM_SIDECAR_UPSTREAMS__OPENAI__BASE_URL", "api.openai.com", "http:// or https://"),
        ("LLM_SIDECAR_DEFAULT_UPSTREAM", "nowhere", "no upstream named"),
        ("LLM_SIDECAR_PROT", "8080", "unknown setting"),
        ("LLM_SIDECAR_REDIS_URL", "localhost:6379", "redis://"),
        ("LLM_SIDECAR_UPSTREAMS__OPENAI__API_KEY", "sk-a\r\nX-Injected: 1", "control characters"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    """Every problem is one line starting with the variable as the operator wrote it."""
    with pytest.raises(SettingsError) as caught:
        _load(monkeypatch, **{variable: value})
    (problem,) = caught.value.problems
    assert problem.startswith(variable + ":")
    assert fragment in problem


def test_check_config_exit_codes_and_masking(tmp_path: object) -> None:
    """check-config prints masked settings (exit 0) or one line per problem (exit 2)."""
    env = {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "sk-very-secret-value"}
    ok = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "sk-very-secret-value" not in ok.stdout
    assert "**********" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config"],
        env={**env, "LLM_SIDECAR_PORT": "0", "LLM_SIDECAR_ADMIN_PORT": "x"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 2
    assert {line.split(":")[1].strip() for line in lines} == {
        "LLM_SIDECAR_PORT",
        "LLM_SIDECAR_ADMIN_PORT",
    }
