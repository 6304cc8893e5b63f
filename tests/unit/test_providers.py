"""Provider kinds as data: settings, the headers each kind wants, Azure deployment routes."""

from __future__ import annotations

import json
import os

import pytest

from proxy.adapters.genai_attributes import operation_name, provider_name
from proxy.core.errors import BadRequest
from proxy.core.headers import request_headers_for_upstream, with_defaults
from proxy.core.providers import ANTHROPIC_VERSION, AZURE_API_VERSION, PROVIDERS
from proxy.core.routing import Route
from proxy.entrypoints.upstreams import build_endpoint_pools, build_router
from proxy.settings import Settings, SettingsError, load_settings
from tests.support.fakes import FakeClock

AZURE = "https://eastus.example.openai.azure.com"


def _load(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in list(os.environ):
        if name.startswith(("LLM_SIDECAR_", "OPENAI_API_KEY", "GROQ_API_KEY", "ANTHROPIC_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def _azure(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    regions = [
        {"name": "eastus", "base_url": AZURE, "api_key": "key-east"},
        {
            "name": "westeu",
            "base_url": "https://westeu.example.openai.azure.com",
            "api_key": "key-w",
        },
    ]
    return _load(
        monkeypatch,
        LLM_SIDECAR_UPSTREAMS__AZURE__KIND="azure",
        LLM_SIDECAR_UPSTREAMS__AZURE__ENDPOINTS=json.dumps(regions),
        **env,
    )


def _noop(*_args: object) -> None:
    return None


def test_builtin_anthropic_upstream_takes_its_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """anthropic is built in, at api.anthropic.com, keyed by ANTHROPIC_API_KEY."""
    settings = _load(monkeypatch, ANTHROPIC_API_KEY="sk-ant-env")
    spec = settings.upstreams["anthropic"]
    assert (spec.base_url, spec.kind) == ("https://api.anthropic.com", "anthropic")
    assert spec.api_key is not None
    assert spec.api_key.get_secret_value() == "sk-ant-env"
    assert settings.upstreams["openai"].kind == "openai"


def test_an_unknown_kind_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """KIND outside openai/azure/anthropic is named in the error."""
    with pytest.raises(SettingsError) as raised:
        _load(monkeypatch, LLM_SIDECAR_UPSTREAMS__OPENAI__KIND="bedrock")
    assert any("LLM_SIDECAR_UPSTREAMS__OPENAI__KIND" in p for p in raised.value.problems)


def test_each_kind_puts_every_endpoint_key_in_its_own_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """openai: Authorization Bearer; azure: api-key per endpoint; anthropic: x-api-key."""
    settings = _azure(
        monkeypatch, OPENAI_API_KEY="sk-o", LLM_SIDECAR_UPSTREAMS__ANTHROPIC__API_KEY="sk-ant"
    )
    pools = build_endpoint_pools(settings, FakeClock(), _noop, _noop)
    assert pools["openai"].endpoints[0].credential == ("Authorization", "Bearer sk-o")
    assert pools["anthropic"].endpoints[0].credential == ("x-api-key", "sk-ant")
    assert [e.credential for e in pools["azure"].endpoints] == [
        ("api-key", "key-east"),
        ("api-key", "key-w"),
    ]
    assert pools["groq"].endpoints[0].credential is None  # no key: none sent
    assert "sk-ant" not in repr(pools["anthropic"].endpoints[0])


def test_anthropic_gets_its_version_only_when_the_caller_sent_none() -> None:
    """Default headers fill gaps; a caller's header of the same name (any case) wins."""
    (default,) = PROVIDERS["anthropic"].default_headers
    assert default == ("anthropic-version", ANTHROPIC_VERSION)
    bare = [("content-type", "application/json")]
    with_defaults(bare, [default])
    assert bare[-1] == default
    own = [("Anthropic-Version", "2024-01-01")]
    with_defaults(own, [default])
    assert own == [("Anthropic-Version", "2024-01-01")]


def test_caller_keys_of_every_sdk_are_never_forwarded() -> None:
    """Authorization, x-api-key and api-key (any case) stay at the sidecar."""
    headers = [("Authorization", "Bearer a"), ("X-Api-Key", "b"), ("API-KEY", "c"), ("a", "1")]
    assert request_headers_for_upstream(headers) == [("a", "1")]


def test_only_openai_and_azure_streams_take_the_usage_option() -> None:
    """Anthropic reports stream usage in its own events: no stream_options for it."""
    assert {kind for kind, p in PROVIDERS.items() if p.stream_usage} == {"openai", "azure"}


def test_v1_requests_map_to_the_azure_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``azure/<deployment>`` goes to /openai/deployments/<deployment>/... with api-version."""
    router = build_router(_azure(monkeypatch))
    route, model = router.by_model("/v1/chat/completions", "azure/gpt4o-prod")
    assert model == "gpt4o-prod"
    assert route.url == (
        f"{AZURE}/openai/deployments/gpt4o-prod/chat/completions?api-version={AZURE_API_VERSION}"
    )
    assert route.target.startswith("/openai/deployments/")


def test_azure_query_keeps_the_callers_version_or_adds_the_configured_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller's api-version wins; other parameters are kept beside the configured one."""
    router = build_router(
        _azure(monkeypatch, LLM_SIDECAR_UPSTREAMS__AZURE__API_VERSION="2025-01-01")
    )
    own, _ = router.by_model("/v1/embeddings?api-version=2023-05-15", "azure/emb")
    assert own.url == f"{AZURE}/openai/deployments/emb/embeddings?api-version=2023-05-15"
    other, _ = router.by_model("/v1/embeddings?x=1", "azure/emb")
    assert other.url == f"{AZURE}/openai/deployments/emb/embeddings?x=1&api-version=2025-01-01"
    listing, _ = router.by_model("/v1/models", None)  # the default upstream is openai
    assert listing.url == "https://api.openai.com/v1/models"


def test_azure_default_upstream_without_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no model there is no deployment: ``/v1/models`` goes to ``/openai/models``."""
    router = build_router(_azure(monkeypatch, LLM_SIDECAR_DEFAULT_UPSTREAM="azure"))
    listing, _ = router.by_model("/v1/models", None)
    assert listing.url == f"{AZURE}/openai/models?api-version={AZURE_API_VERSION}"
    unprefixed, _ = router.by_model("/v1/chat/completions", "gpt4o")
    assert unprefixed.url.startswith(f"{AZURE}/openai/deployments/gpt4o/chat/completions?")


@pytest.mark.parametrize(
    "model", ["azure/..", "azure/a/../b", "azure/x?y", "azure/%2e%2e", "azure/"]
)
def test_a_model_that_is_no_deployment_name_is_refused(
    monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    """Nothing in a model may climb out of or add to the deployment path."""
    router = build_router(_azure(monkeypatch))
    if model == "azure/":  # an empty deployment is no model: the models route
        route, _ = router.by_model("/v1/chat/completions", model)
        assert "/deployments/" not in route.url
        return
    with pytest.raises(BadRequest) as raised:
        router.by_model("/v1/chat/completions", model)
    assert raised.value.code == "invalid_model"


def test_prefix_routes_pass_through_for_every_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """What AzureOpenAI and the anthropic SDK call is forwarded as is, query included."""
    router = build_router(_azure(monkeypatch))
    path = "/azure/openai/deployments/d/chat/completions?api-version=2024-10-21"
    route = router.by_prefix(path)
    assert isinstance(route, Route)
    assert route.url == f"{AZURE}/openai/deployments/d/chat/completions?api-version=2024-10-21"
    anthropic = router.by_prefix("/anthropic/v1/messages")
    assert anthropic is not None
    assert anthropic.url == "https://api.anthropic.com/v1/messages"


def test_fallback_between_kinds_follows_the_mapped_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A /v1 request moved from openai to azure goes to the mapped model's deployment."""
    router = build_router(_azure(monkeypatch))
    route, _ = router.by_model("/v1/chat/completions", "gpt-4o")
    moved = router.with_upstream(route, router.upstream("azure"), "gpt4o-prod")
    assert moved.url.startswith(f"{AZURE}/openai/deployments/gpt4o-prod/chat/completions?")
    back = router.with_upstream(moved, router.upstream("openai"), "gpt-4o")
    assert back.url == "https://api.openai.com/v1/chat/completions"


def test_genai_provider_name_follows_the_kind() -> None:
    """Any upstream of kind azure or anthropic reports the conventions' provider value."""
    assert provider_name("claude", "anthropic") == "anthropic"
    assert provider_name("westeu", "azure") == "azure.ai.openai"
    assert provider_name("groq") == "groq"
    assert provider_name("vllm", "openai") == "vllm"
    assert operation_name("/anthropic/v1/messages") == "chat"
    assert operation_name("/openai/v1/threads/t/messages") is None
