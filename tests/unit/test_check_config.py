"""check-config prints the effective settings with every credential masked, URLs included."""

from __future__ import annotations

import os

import orjson
import pytest

from proxy.entrypoints.cli import main, mask_url

DB_PASSWORD = "pg-s3cret-pw"
DB_QUERY_PASSWORD = "pg-query-s3cret"
REDIS_PASSWORD = "redis-s3cret-pw"
UPSTREAM_PASSWORD = "vllm-s3cret-pw"
PROVIDER_KEY = "sk-check-config-0123456789"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No LLM_SIDECAR_* or provider key from the outer environment leaks into the test."""
    for name in list(os.environ):
        if name.startswith(("LLM_SIDECAR_", "OPENAI_API_KEY", "GROQ_API_KEY")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_check_config_masks_passwords_in_urls(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """DATABASE_URL, REDIS_URL and upstream URLs print with their passwords masked."""
    clean_env.setenv(
        "LLM_SIDECAR_DATABASE_URL",
        f"postgresql://app:{DB_PASSWORD}@db:5432/users?sslmode=require&password={DB_QUERY_PASSWORD}",
    )
    clean_env.setenv("LLM_SIDECAR_REDIS_URL", f"rediss://default:{REDIS_PASSWORD}@cache:6380/0")
    clean_env.setenv(
        "LLM_SIDECAR_UPSTREAMS__VLLM__BASE_URL", f"http://ops:{UPSTREAM_PASSWORD}@vllm:8000"
    )
    clean_env.setenv("OPENAI_API_KEY", PROVIDER_KEY)
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    for secret in (DB_PASSWORD, DB_QUERY_PASSWORD, REDIS_PASSWORD, UPSTREAM_PASSWORD, PROVIDER_KEY):
        assert secret not in out
    effective = orjson.loads(out)
    assert effective["database_url"] == (
        "postgresql://app:***@db:5432/users?sslmode=require&password=***"
    )
    assert effective["redis_url"] == "rediss://default:***@cache:6380/0"
    assert effective["upstreams"]["vllm"]["base_url"] == "http://ops:***@vllm:8000"
    assert effective["upstreams"]["openai"]["api_key"] == "**********"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite:///./.llm-sidecar/users.db", "sqlite:///./.llm-sidecar/users.db"),
        ("postgresql://app@db/users", "postgresql://app@db/users"),
        ("postgresql://app:p%40ss@word@db/users", "postgresql://app:***@db/users"),
        ("redis://:only-a-password@cache:6379/0", "redis://:***@cache:6379/0"),
        ("unix://:pw@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        ("https://h/v1?api-key=k1&token=t1&flag", "https://h/v1?api-key=***&token=***&flag"),
        ("http://[::1", "**********"),
    ],
)
def test_mask_url_hides_credentials_only(url: str, shown: str) -> None:
    """Hosts, paths, users and harmless parameters stay; passwords and tokens do not."""
    assert mask_url(url) == shown
