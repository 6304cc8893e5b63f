"""Settings from the environment (prefix ``LLM_SIDECAR_``), validated once at start.

Garbage never reaches the core: a bad value stops the process with exit code 2 and
one line per problem naming the variable as the operator wrote it
(``LLM_SIDECAR_UPSTREAMS__OPENAI__BASE_URL``), see :func:`load_settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from proxy.core.forward_proxy import environment_problem
from proxy.settings.upstreams import (
    BUILTIN_KEY_VARIABLES,
    BUILTIN_UPSTREAMS,
    EndpointSettings,
    UpstreamSettings,
)

__all__ = [
    "ENV_PREFIX",
    "NESTED_DELIMITER",
    "EndpointSettings",
    "Settings",
    "SettingsError",
    "UpstreamSettings",
    "load_settings",
]

ENV_PREFIX = "LLM_SIDECAR_"
NESTED_DELIMITER = "__"
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0)]


def _prices_file(value: str | None) -> str | None:
    if value is not None:
        from pathlib import Path

        from proxy.entrypoints.prices import read_overrides

        read_overrides(Path(value))  # PricesError is a ValueError: one clear line
    return value


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
        merged: dict[str, Any] = {name: dict(spec) for name, spec in BUILTIN_UPSTREAMS.items()}
        for name, variable in BUILTIN_KEY_VARIABLES.items():
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
