"""The injector's configuration (the operator's JSON file) and the names it writes into pods.

Whatever decides where the provider keys can go (the sidecar's image, its Secrets, the
settings it reads) comes from this file, never from the pod or its namespace: a pod may
only choose among what is listed here (ADR 0045).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

CONFIG_ENV = "LLM_SIDECAR_INJECTOR_CONFIG"
INJECT_LABEL = "llm-sidecar.io/inject"
SIDECAR_LABEL = "llm-sidecar.io/sidecar"
STATUS_ANNOTATION = "llm-sidecar.io/status"
IMAGE_ANNOTATION = "llm-sidecar.io/image"
MODE_ANNOTATION = "llm-sidecar.io/mode"
SECRETS_ANNOTATION = "llm-sidecar.io/secrets"
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
DATA_VOLUME = "llm-sidecar-data"
OPS_PORT_NAME = "llm-sidecar-ops"
DATA_DIR = "/var/lib/llm-sidecar"  # the image's writable data dir (its SQLite default)

_DNS_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DnsName = Annotated[str, StringConstraints(pattern=_DNS_NAME, max_length=253)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
ImageRef = Annotated[str, StringConstraints(pattern=r"^\S+$", max_length=512)]
Port = Annotated[int, Field(ge=1, le=65535)]
Quantities = dict[Literal["cpu", "memory", "ephemeral-storage"], str]

# What a namespace's settings ConfigMap may set unless the operator says otherwise:
# logging, tracing, timeouts and drain. Nothing that moves keys, limits or listeners.
DEFAULT_CONFIG_MAP_KEYS = (
    "LLM_SIDECAR_LOG_LEVEL",
    "LLM_SIDECAR_LOG_FORMAT",
    "LLM_SIDECAR_UPSTREAM_CONNECT_TIMEOUT_SECONDS",
    "LLM_SIDECAR_UPSTREAM_READ_TIMEOUT_SECONDS",
    "LLM_SIDECAR_UPSTREAM_POOL_TIMEOUT_SECONDS",
    "LLM_SIDECAR_CLIENT_TIMEOUT_SECONDS",
    "LLM_SIDECAR_BREAKER_FAILURE_THRESHOLD",
    "LLM_SIDECAR_BREAKER_COOLDOWN_SECONDS",
    "LLM_SIDECAR_PRESTOP_SECONDS",
    "LLM_SIDECAR_DRAIN_SECONDS",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
)

# Variables that choose where the keys go or who can reach the sidecar: refused in
# config_map_keys whatever the operator lists, so a namespace author can never set them.
_UNSAFE_KEY = re.compile(
    r"LLM_SIDECAR_(UPSTREAMS|HOST|ADMIN_HOST|PORT|ADMIN_PORT|DATABASE_URL|REDIS_URL)(__.*)?"
    r"|.*_API_KEY|.*_PROXY|.*_CA_(FILE|BUNDLE|CERTS?|DIR)|SSL_CERT_(FILE|DIR)"
    r"|REQUESTS_CA_BUNDLE|PYTHON.*|LD_.*",
    re.IGNORECASE,
)


class SidecarResources(BaseModel):
    """Requests and limits of the injected container."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: Quantities = {"cpu": "50m", "memory": "64Mi"}
    limits: Quantities = {"memory": "256Mi"}


class InjectorConfig(BaseModel):
    """What the injector adds to a pod; read from the JSON in ``LLM_SIDECAR_INJECTOR_CONFIG``.

    ``allowed_images`` and ``allowed_secret_names`` are what the per-pod annotations may
    choose besides ``image`` and ``secret_names``; ``config_map_keys`` are the only keys
    the sidecar reads from the namespace's ``config_map_name``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: ImageRef = "llm-sidecar:0.1.0"
    allowed_images: tuple[ImageRef, ...] = ()
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    mode: Literal["native", "container"] = "native"
    container_name: Annotated[str, StringConstraints(pattern=_DNS_NAME, max_length=63)] = (
        "llm-sidecar"
    )
    port: Port = 8080
    admin_port: Port = 9464
    resources: SidecarResources = Field(default_factory=SidecarResources)
    env: dict[EnvName, str] = Field(default_factory=dict)
    secret_names: tuple[DnsName, ...] = ("llm-sidecar-provider-keys",)
    allowed_secret_names: tuple[DnsName, ...] = ()
    config_map_name: DnsName | None = "llm-sidecar-settings"
    config_map_keys: tuple[EnvName, ...] = DEFAULT_CONFIG_MAP_KEYS
    allow_shared_process_namespace: bool = False
    run_as_user: Annotated[int, Field(ge=1)] = 10001
    inject_unlabeled: bool = True
    set_base_urls: bool = True
    pre_stop_sleep_seconds: Annotated[int, Field(ge=0, le=60)] = 5

    @model_validator(mode="after")
    def _consistent(self) -> InjectorConfig:
        if {"LLM_SIDECAR_PORT", "LLM_SIDECAR_ADMIN_PORT"} & set(self.env):
            raise ValueError("set the sidecar's ports with port and admin_port, not env")
        if self.port == self.admin_port:
            raise ValueError("port and admin_port must differ")
        if unsafe := [key for key in self.config_map_keys if _UNSAFE_KEY.fullmatch(key)]:
            raise ValueError(
                f"config_map_keys: {', '.join(unsafe)} could redirect the provider keys; "
                "set them in env or in a Secret of secret_names instead"
            )
        if shadowed := sorted(set(self.config_map_keys) & set(self.env)):
            raise ValueError(f"config_map_keys: {', '.join(shadowed)} already set in env")
        if len(set(self.config_map_keys)) != len(self.config_map_keys):
            raise ValueError("config_map_keys: a key is listed twice")
        return self


class InjectorConfigError(Exception):
    """The injector's config file is missing or invalid (one line, no secrets)."""


def load_injector_config(environ: Mapping[str, str]) -> InjectorConfig:
    """Read the JSON file named by ``LLM_SIDECAR_INJECTOR_CONFIG``; defaults when unset."""
    path = environ.get(CONFIG_ENV, "")
    if not path:
        return InjectorConfig()
    try:
        with open(path, "rb") as file:
            return InjectorConfig.model_validate_json(file.read())
    except OSError as exc:
        raise InjectorConfigError(f"{CONFIG_ENV}: cannot read {path}: {exc.strerror}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'file'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise InjectorConfigError(f"{CONFIG_ENV}: {path}: {problems}") from None
