"""OpenTelemetry GenAI semantic conventions for an OpenAI-compatible call, as plain data.

Shared by the span adapter (``tracing_otel``) and the Prometheus GenAI histograms, so
both speak the same operation and provider names. Only names and lookups live here:
no value ever derived from a prompt, a completion or a credential.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

OPERATION_NAME: Final = "gen_ai.operation.name"
PROVIDER_NAME: Final = "gen_ai.provider.name"
REQUEST_MODEL: Final = "gen_ai.request.model"
RESPONSE_MODEL: Final = "gen_ai.response.model"
RESPONSE_ID: Final = "gen_ai.response.id"
INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
TENANT: Final = "llm_sidecar.tenant"
CORRELATION_ID: Final = "llm_sidecar.correlation_id"
UPSTREAM: Final = "llm_sidecar.upstream"

# Path suffix (of the OpenAI-compatible API) -> gen_ai.operation.name. Checked in this
# order: "/chat/completions" must win over "/completions".
_OPERATIONS: Final = (
    ("/chat/completions", "chat"),
    ("/responses", "chat"),
    ("/embeddings", "embeddings"),
    ("/completions", "text_completion"),
    ("/v1/messages", "chat"),  # Anthropic's Messages API (not Assistants' threads)
)
# Upstream names the sidecar knows -> the conventions' well-known provider values;
# any other upstream (vLLM, Together...) is reported under its own configured name.
_PROVIDERS: Final[Mapping[str, str]] = {
    "openai": "openai",
    "groq": "groq",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "perplexity": "perplexity",
    "xai": "x_ai",
    "cohere": "cohere",
    "gemini": "gcp.gemini",
    "bedrock": "aws.bedrock",
}


_operations: dict[str, str | None] = {}


def operation_name(path: str) -> str | None:
    """The GenAI operation a request path performs, ``None`` for other API calls.

    Remembered per path (the API's paths are a handful; a full memo just stops growing):
    the span and the metrics both ask on every request.
    """
    try:
        return _operations[path]
    except KeyError:
        pass
    bare = path.partition("?")[0].rstrip("/")
    found = next((op for suffix, op in _OPERATIONS if bare.endswith(suffix)), None)
    if len(_operations) < 1024:
        _operations[path] = found
    return found


# Provider kinds (``proxy.core.providers``) whose API names the provider whatever the
# upstream is called; ``openai`` is the kind of every OpenAI-compatible server.
_KINDS: Final[Mapping[str, str]] = {"azure": "azure.ai.openai", "anthropic": "anthropic"}


def provider_name(upstream: str, kind: str = "openai") -> str:
    """``gen_ai.provider.name`` for a configured upstream of that provider kind."""
    return _KINDS.get(kind) or _PROVIDERS.get(upstream, upstream)


def span_name(operation: str, model: str | None) -> str:
    """``{gen_ai.operation.name} {gen_ai.request.model}``, or the operation alone."""
    return f"{operation} {model}" if model else operation
