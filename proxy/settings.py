"""Settings from the environment (prefix ``LLM_SIDECAR_``), validated once at start.

Garbage never reaches the core: a bad value stops the process with exit code 2 and
one line per problem naming the variable as the operator wrote it
(``LLM_SIDECAR_UPSTREAMS__OPENAI__BASE_URL``), see :func:`load_settings`.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from proxy.adapters.upstream_egress import environment_problem, parse_proxy_url
from proxy.core.providers import Kind

ENV_PREFIX = "LLM_SIDECAR_"
NESTED_DELIMITER = "__"
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0)]


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


def _prices_file(value: str | None) -> str | None:
    if value is not None:
        from pathlib import Path

        from proxy.entrypoints.prices import read_overrides

        read_overrides(Path(value))  # PricesError is a ValueError: one clear line
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
_BUILTIN_UPSTREAMS: Mapping[str, Mapping[str, str]] = {
    "openai": {"base_url": "https://api.openai.com", "openai_path": "/v1"},
    "groq": {"base_url": "https://api.groq.com", "openai_path": "/openai/v1"},
    "anthropic": {
        "base_url": "https://api.anthropic.com",
        "openai_path": "/v1",
        "kind": "anthropic",
    },
}
_BUILTIN_KEY_VARIABLES: Mapping[str, str] = {
    "openai": "OPENAI_API_KEY",
    "groq": "GROQ_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
}


class Settings(BaseSettings):
    """Everything the sidecar reads from its environment; see docs/reference.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    host: str = "127.0.0.1"
    port: Port = 8080
    admin_host: str = "0.0.0.0"
    admin_port: Port = 9464

    upstreams: dict[str, UpstreamSettings] = Field(default_factory=dict)
    default_upstream: str = "openai"
    upstream_connect_timeout_seconds: PositiveSeconds = 5.0
    upstream_read_timeout_seconds: PositiveSeconds = 300.0
    # As many as MAX_INFLIGHT: every live stream holds its own HTTP/1.1 connection, so a
    # lower cap would queue streams behind streams (lower it only to spare a provider).
    upstream_max_connections: Annotated[int, Field(ge=1)] = 4096
    upstream_pool_timeout_seconds: PositiveSeconds = 5.0

    database_url: str = "sqlite:///./.llm-sidecar/users.db"
    auth_cache_ttl_seconds: Annotated[float, Field(ge=0)] = 30.0

    redis_url: SecretStr | None = None
    rate_limit_failure_mode: Literal["open", "closed"] = "open"
    default_rpm: Annotated[int, Field(ge=1)] = 600
    default_tpm: Annotated[int, Field(ge=1)] = 200_000
    default_max_output_tokens: Annotated[int, Field(ge=1)] = 4096
    stream_include_usage: bool = True
    max_model_labels: Annotated[int, Field(ge=1)] = 64
    prices_file: Annotated[str | None, AfterValidator(_prices_file)] = None
    """JSON prices (USD per 1M tokens) added to or replacing the built-in table."""
    spend_flush_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    """How often spend is written to the repository and other sidecars' spend read back."""

    breaker_failure_threshold: Annotated[int, Field(ge=1)] = 5
    breaker_cooldown_seconds: PositiveSeconds = 60.0

    retry_max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    retry_budget_ratio: Annotated[float, Field(ge=0, le=1)] = 0.2
    retry_max_backoff_seconds: Annotated[float, Field(ge=0, le=60)] = 2.0

    max_body_bytes: Annotated[int, Field(ge=1)] = 8 * 1024 * 1024
    # Every request body held at once, in bytes: what MAX_BODY_BYTES x MAX_INFLIGHT would
    # be unbounded (a few MiB of RSS per MiB held; see README "Memory").
    max_body_bytes_in_flight: Annotated[int, Field(ge=1)] = 32 * 1024 * 1024
    max_inflight: Annotated[int, Field(ge=1)] = 4096
    client_timeout_seconds: PositiveSeconds = 60.0
    prestop_seconds: Annotated[float, Field(ge=0)] = 0.0
    drain_seconds: Annotated[float, Field(ge=0)] = 20.0

    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:///, postgresql:// or postgres://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("upstreams", mode="before")
    @classmethod
    def _with_builtins(cls, value: Any) -> Any:
        """Overlay what the operator set on the built-in openai and groq upstreams."""
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {name: dict(spec) for name, spec in _BUILTIN_UPSTREAMS.items()}
        for name, variable in _BUILTIN_KEY_VARIABLES.items():
            if os.environ.get(variable):
                merged[name]["api_key"] = os.environ[variable]
        for name, spec in value.items():
            key = name.lower()
            if isinstance(spec, dict):
                merged.setdefault(key, {}).update(spec)
            else:
                merged[key] = spec
        return merged

    def model_post_init(self, context: Any, /) -> None:
        problems = []
        if self.default_upstream not in self.upstreams:
            problems.append(
                f"{ENV_PREFIX}DEFAULT_UPSTREAM: no upstream named {self.default_upstream!r}"
            )
        for name, spec in self.upstreams.items():
            if spec.base_url is None and not spec.endpoints:
                problems.append(
                    f"{ENV_PREFIX}UPSTREAMS__{name.upper()}__BASE_URL: "
                    "set it, or ENDPOINTS (a JSON list of endpoints)"
                )
            names = (
                [endpoint.name for endpoint in spec.resolved_endpoints()]
                if spec.base_url or spec.endpoints
                else []
            )
            if len(set(names)) != len(names):
                problems.append(
                    f"{ENV_PREFIX}UPSTREAMS__{name.upper()}__ENDPOINTS: endpoint names must differ"
                )
            if spec.fallback is not None and spec.fallback not in self.upstreams:
                problems.append(
                    f"{ENV_PREFIX}UPSTREAMS__{name.upper()}__FALLBACK: "
                    f"no upstream named {spec.fallback!r}"
                )
            if not name.replace("-", "").replace("_", "").isalnum():
                problems.append(f"{ENV_PREFIX}UPSTREAMS__{name.upper()}: name must be alphanumeric")
            for endpoint in spec.resolved_endpoints() if names else []:
                if spec.proxy_url is None and endpoint.proxy_url is None:
                    egress = environment_problem(endpoint.base_url, os.environ)
                    if egress is not None and egress not in problems:
                        problems.append(egress)  # HTTPS_PROXY and the like, used here
        if self.max_body_bytes > self.max_body_bytes_in_flight:
            problems.append(
                f"{ENV_PREFIX}MAX_BODY_BYTES: must not exceed "
                f"{ENV_PREFIX}MAX_BODY_BYTES_IN_FLIGHT ({self.max_body_bytes_in_flight})"
            )
        if problems:
            raise SettingsError(problems)


class SettingsError(Exception):
    """Invalid configuration; ``problems`` holds one operator-facing line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _variable_name(location: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + NESTED_DELIMITER.join(str(part).upper() for part in location)


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    known = {name.upper() for name in Settings.model_fields}
    problems = []
    for variable in environ:
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper.startswith(ENV_PREFIX + "INJECTOR_"):
            continue
        field = upper[len(ENV_PREFIX) :].split(NESTED_DELIMITER, 1)[0]
        if field not in known:
            problems.append(f"{variable}: unknown setting")
    return problems


def load_settings() -> Settings:
    """Read and validate settings from the process environment (pydantic-settings reads
    ``os.environ``; so does the typo check); raises :class:`SettingsError` listing every
    problem."""
    problems = _unknown_variables(os.environ)
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            problems.append(f"{_variable_name(error['loc'])}: {error['msg']}")
        raise SettingsError(problems) from None
    except SourceError as exc:
        # pydantic-settings names the field, not the variable, and hides the cause.
        field = str(exc).split('"')[1] if '"' in str(exc) else "?"
        problems.append(f"{ENV_PREFIX}{field.upper()}: not valid JSON")
        raise SettingsError(problems) from None
    except SettingsError as exc:
        problems.extend(exc.problems)
        raise SettingsError(problems) from None
    if problems:
        raise SettingsError(problems)
    return settings
