"""One upstream's settings (``LLM_SIDECAR_UPSTREAMS__<NAME>__...``) and the built-in three.

Validated at the edge like the rest of :mod:`proxy.settings`: origins, keys fit for an
HTTP header, forward proxy URLs (parsed by the same ``parse_proxy_url`` the transport
uses) and CA files that load.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from proxy.core.forward_proxy import parse_proxy_url
from proxy.core.providers import Kind


def _http_origin(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    return value.rstrip("/")


def _optional_origin(value: str | None) -> str | None:
    return None if value is None else _http_origin(value)


def _api_path(value: str) -> str:
    if value and not value.startswith("/"):
        raise ValueError("must start with '/'")
    return value.rstrip("/")


def _header_safe(value: SecretStr | None) -> SecretStr | None:
    # The key goes into an HTTP header verbatim: a stray newline would split the request.
    if value is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value.get_secret_value()):
        raise ValueError("must not contain control characters (a pasted newline?)")
    return value


def _proxy_url(value: SecretStr | None) -> SecretStr | None:
    # A SecretStr: it may carry the proxy's password. ``none``: connect directly.
    if value is not None and value.get_secret_value().strip().lower() != "none":
        parse_proxy_url(value.get_secret_value())  # ValueError quotes nothing of it
    return value


def _ca_file(value: str | None) -> str | None:
    if value is not None:
        try:
            ssl.create_default_context().load_verify_locations(cafile=value)
        except OSError as exc:
            if isinstance(exc, ssl.SSLError):
                raise ValueError("holds no usable PEM certificate") from None
            raise ValueError(f"cannot read {value!r} ({exc.strerror or exc})") from None
    return value


class EndpointSettings(BaseModel):
    """One base URL and key of an upstream (a region, an org, a second key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: Annotated[str, AfterValidator(_http_origin)]
    api_key: Annotated[SecretStr | None, AfterValidator(_header_safe)] = None
    weight: Annotated[int, Field(ge=1, le=1000)] = 1
    name: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")] = None
    """Defaults to the endpoint's index; a metric label, so short and plain."""
    proxy_url: Annotated[SecretStr | None, AfterValidator(_proxy_url)] = None
    """This endpoint's forward proxy (``none``: direct), over the upstream's (ADR 0090)."""


class UpstreamSettings(BaseModel):
    """One OpenAI-compatible provider the sidecar may call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: Annotated[str | None, AfterValidator(_optional_origin)] = None
    api_key: Annotated[SecretStr | None, AfterValidator(_header_safe)] = None
    endpoints: list[EndpointSettings] | None = None
    """Replaces ``base_url``/``api_key`` when set: requests spread over them by weight."""
    openai_path: Annotated[str, AfterValidator(_api_path)] = "/v1"
    kind: Kind = "openai"
    """The provider's API: where its key goes, Azure's deployment paths (docs/providers.md)."""
    api_version: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9._-]{1,32}$")] = None
    """``kind=azure``: the ``api-version`` of ``/v1/...`` requests (a recent GA one if unset)."""
    fallback: str | None = None
    fallback_models: dict[str, str] = Field(default_factory=dict)
    proxy_url: Annotated[SecretStr | None, AfterValidator(_proxy_url)] = None
    """Forward proxy (``none``: direct), over ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``."""
    ca_file: Annotated[str | None, AfterValidator(_ca_file)] = None
    """PEM trust anchors added to the system store for this upstream's TLS."""

    def resolved_endpoints(self) -> list[EndpointSettings]:
        """The endpoints requests go to: ``ENDPOINTS``, or the one ``BASE_URL``/``API_KEY``."""
        if self.endpoints:
            return [
                spec if spec.name is not None else spec.model_copy(update={"name": str(index)})
                for index, spec in enumerate(self.endpoints)
            ]
        assert self.base_url is not None  # checked by Settings.model_post_init
        return [EndpointSettings(base_url=self.base_url, api_key=self.api_key, name="0")]


# The built-ins and where their keys come from when not set explicitly.
BUILTIN_UPSTREAMS: Mapping[str, Mapping[str, str]] = {
    "openai": {"base_url": "https://api.openai.com", "openai_path": "/v1"},
    "groq": {"base_url": "https://api.groq.com", "openai_path": "/openai/v1"},
    "anthropic": {
        "base_url": "https://api.anthropic.com",
        "openai_path": "/v1",
        "kind": "anthropic",
    },
}
BUILTIN_KEY_VARIABLES: Mapping[str, str] = {
    "openai": "OPENAI_API_KEY",
    "groq": "GROQ_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
}
