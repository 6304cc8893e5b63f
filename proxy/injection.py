"""Sidecar injection as a pure function: a Pod (parsed JSON) in, a JSONPatch out.

:func:`plan_injection` never raises for a pod it cannot read: it answers with an empty
patch and a reason, because the webhook must never block a pod it does not understand.
The patch copes with absent ``metadata``, ``annotations``, ``labels``, ``initContainers``,
``volumes`` and ``env`` fields (JSONPatch cannot append to a list that does not exist) and
escapes ``~`` and ``/`` in keys (RFC 6901), as in ``/metadata/annotations/llm-sidecar.io~1status``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

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
_DNS_NAME_RE = re.compile(_DNS_NAME)
DnsName = Annotated[str, StringConstraints(pattern=_DNS_NAME, max_length=253)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Port = Annotated[int, Field(ge=1, le=65535)]
Quantities = dict[Literal["cpu", "memory", "ephemeral-storage"], str]

# Kubelet runs this before starting the next container: in ``container`` mode the app
# starts only once the sidecar answers (or a minute passed, so a broken sidecar never
# wedges the pod). Native sidecars get the same ordering from their startupProbe.
_WAIT_READY = """import time, urllib.request
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen("http://127.0.0.1:{port}/readyz", timeout=1).close()
        break
    except Exception:
        time.sleep(0.5)
"""


class SidecarResources(BaseModel):
    """Requests and limits of the injected container."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: Quantities = {"cpu": "50m", "memory": "64Mi"}
    limits: Quantities = {"memory": "256Mi"}


class InjectorConfig(BaseModel):
    """What the injector adds to a pod; read from the JSON in ``LLM_SIDECAR_INJECTOR_CONFIG``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: Annotated[str, StringConstraints(pattern=r"^\S+$", max_length=512)] = "llm-sidecar:0.1.0"
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
    config_map_names: tuple[DnsName, ...] = ("llm-sidecar-settings",)
    run_as_user: Annotated[int, Field(ge=1)] = 10001
    inject_unlabeled: bool = True
    set_base_urls: bool = True
    pre_stop_sleep_seconds: Annotated[int, Field(ge=0, le=60)] = 5

    @model_validator(mode="after")
    def _ports_not_in_env(self) -> InjectorConfig:
        if {"LLM_SIDECAR_PORT", "LLM_SIDECAR_ADMIN_PORT"} & set(self.env):
            raise ValueError("set the sidecar's ports with port and admin_port, not env")
        if self.port == self.admin_port:
            raise ValueError("port and admin_port must differ")
        return self


@dataclass(frozen=True, slots=True)
class InjectionPlan:
    """The webhook's answer: ``patch`` (empty means leave the pod alone) and why."""

    patch: list[dict[str, Any]]
    reason: str
    warnings: tuple[str, ...] = ()


class _Unreadable(ValueError):
    """The pod has a shape this injector does not understand."""


def pointer_token(key: str) -> str:
    """Escape one JSON Pointer reference token (RFC 6901: ``~`` first, then ``/``)."""
    return key.replace("~", "~0").replace("/", "~1")


def base_urls(port: int) -> dict[str, str]:
    """The SDK variables that point an app at a sidecar listening on ``port``."""
    origin = f"http://127.0.0.1:{port}"
    return {"OPENAI_BASE_URL": f"{origin}/openai/v1", "GROQ_BASE_URL": f"{origin}/groq"}


def plan_injection(pod: object, config: InjectorConfig) -> InjectionPlan:
    """Decide whether and how to inject the sidecar into ``pod`` (a Pod object as JSON)."""
    try:
        return _plan(pod, config)
    except _Unreadable as exc:
        return InjectionPlan([], f"not understood: {exc}", (f"llm-sidecar not injected: {exc}",))


def _plan(pod: object, config: InjectorConfig) -> InjectionPlan:
    pod = _mapping(pod, "pod")
    metadata = _mapping(pod.get("metadata", {}), "metadata")
    labels = _strings(metadata.get("labels"), "metadata.labels")
    annotations = _strings(metadata.get("annotations"), "metadata.annotations")
    spec = _mapping(pod.get("spec"), "spec")
    containers = _objects(spec.get("containers"), "spec.containers")
    if not containers:
        raise _Unreadable("spec.containers is empty")
    inits = _objects(spec.get("initContainers", []), "spec.initContainers")
    volumes = _objects(spec.get("volumes", []), "spec.volumes")

    opt_in = labels.get(INJECT_LABEL)
    if opt_in is not None and opt_in != "enabled":
        return InjectionPlan([], "opted out")
    if opt_in is None and not config.inject_unlabeled:
        return InjectionPlan([], "not opted in")
    if annotations.get(STATUS_ANNOTATION) == "injected" or any(
        c.get("name") == config.container_name for c in (*containers, *inits)
    ):
        # Reinvoked after another webhook added containers: point those at us too.
        return InjectionPlan(_base_url_ops(containers, config), "already injected")
    if spec.get("hostNetwork") is True:
        raise _Unreadable("hostNetwork pods share the node's loopback")
    config = _with_overrides(config, annotations)
    _check_conflicts(containers, inits, volumes, config)

    patch: list[dict[str, Any]] = []
    if "metadata" not in pod:
        patch.append({"op": "add", "path": "/metadata", "value": {}})
    new_annotations = {STATUS_ANNOTATION: "injected"}
    if "prometheus.io/scrape" not in annotations:
        new_annotations.update(_scrape_annotations(config.admin_port))
    if config.mode == "container" and DEFAULT_CONTAINER_ANNOTATION not in annotations:
        # The sidecar becomes containers[0]; keep kubectl logs/exec aimed at the app.
        new_annotations[DEFAULT_CONTAINER_ANNOTATION] = str(containers[0].get("name", ""))
    patch += _map_ops("/metadata/annotations", metadata.get("annotations"), new_annotations)
    patch += _map_ops("/metadata/labels", metadata.get("labels"), {SIDECAR_LABEL: "true"})
    data_volume = {"name": DATA_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}
    patch.append(_list_add("/spec/volumes", spec.get("volumes"), data_volume, at_end=True))
    # Env first: in container mode the sidecar's insertion shifts the app's indexes.
    patch += _base_url_ops(containers, config)
    where = "/spec/initContainers" if config.mode == "native" else "/spec/containers"
    patch.append(
        _list_add(where, spec.get(where.rsplit("/", 1)[1]), _sidecar(config), at_end=False)
    )
    return InjectionPlan(patch, "injected")


def _scrape_annotations(port: int) -> dict[str, str]:
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _Unreadable(f"{where} is not an object")
    return value


def _strings(value: object, where: str) -> Mapping[str, str]:
    if value is None:
        return {}
    items = _mapping(value, where)
    if not all(isinstance(v, str) for v in items.values()):
        raise _Unreadable(f"{where} holds a value that is not a string")
    return items


def _objects(value: object, where: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _Unreadable(f"{where} is not a list of objects")
    return value


def _with_overrides(config: InjectorConfig, annotations: Mapping[str, str]) -> InjectorConfig:
    update: dict[str, Any] = {}
    if (image := annotations.get(IMAGE_ANNOTATION)) is not None:
        if not image or len(image) > 512 or any(ch.isspace() for ch in image):
            raise _Unreadable(f"annotation {IMAGE_ANNOTATION} is not an image reference")
        update["image"] = image
    if (mode := annotations.get(MODE_ANNOTATION)) is not None:
        if mode not in ("native", "container"):
            raise _Unreadable(f"annotation {MODE_ANNOTATION} must be native or container")
        update["mode"] = mode
    if (secrets := annotations.get(SECRETS_ANNOTATION)) is not None:
        names = tuple(name.strip() for name in secrets.split(",") if name.strip())
        if not all(_DNS_NAME_RE.match(name) and len(name) <= 253 for name in names):
            raise _Unreadable(f"annotation {SECRETS_ANNOTATION} must list Secret names")
        update["secret_names"] = names
    return config.model_copy(update=update) if update else config


def _check_conflicts(
    containers: list[Mapping[str, Any]],
    inits: list[Mapping[str, Any]],
    volumes: list[Mapping[str, Any]],
    config: InjectorConfig,
) -> None:
    if any(volume.get("name") == DATA_VOLUME for volume in volumes):
        raise _Unreadable(f"the pod already has a volume named {DATA_VOLUME}")
    for container in (*containers, *inits):
        for port in _objects(container.get("ports"), "container ports"):
            if port.get("name") == OPS_PORT_NAME or port.get("containerPort") in (
                config.port,
                config.admin_port,
            ):
                raise _Unreadable(f"container {container.get('name')} uses the sidecar's ports")


def _map_ops(path: str, current: object, additions: Mapping[str, str]) -> list[dict[str, Any]]:
    if current is None:
        return [{"op": "add", "path": path, "value": dict(additions)}]
    return [
        {"op": "add", "path": f"{path}/{pointer_token(key)}", "value": value}
        for key, value in additions.items()
    ]


def _list_add(path: str, current: object, item: object, *, at_end: bool) -> dict[str, Any]:
    if current is None:
        return {"op": "add", "path": path, "value": [item]}
    return {"op": "add", "path": f"{path}/{'-' if at_end else '0'}", "value": item}


def _base_url_ops(
    containers: list[Mapping[str, Any]], config: InjectorConfig
) -> list[dict[str, Any]]:
    if not config.set_base_urls:
        return []
    wanted = base_urls(config.port)
    ops: list[dict[str, Any]] = []
    for index, container in enumerate(containers):
        if container.get("name") == config.container_name:
            continue
        env = _objects(container.get("env"), f"env of container {container.get('name')}")
        present = {variable.get("name") for variable in env}
        missing = [{"name": k, "value": v} for k, v in wanted.items() if k not in present]
        path = f"/spec/containers/{index}/env"
        if not missing:
            continue
        if container.get("env") is None:
            ops.append({"op": "add", "path": path, "value": missing})
        else:
            ops += [{"op": "add", "path": f"{path}/-", "value": item} for item in missing]
    return ops


def _sidecar(config: InjectorConfig) -> dict[str, Any]:
    ops = {"path": "/readyz", "port": config.admin_port}
    # Ports are fixed here because probes and base URLs depend on them; everything else
    # (database URL included, whose default the image points at DATA_DIR) is left to
    # envFrom, which explicit env would override.
    env = {
        "LLM_SIDECAR_PORT": str(config.port),
        "LLM_SIDECAR_ADMIN_PORT": str(config.admin_port),
        **config.env,
    }
    container: dict[str, Any] = {
        "name": config.container_name,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": ["serve"],
        "ports": [{"name": OPS_PORT_NAME, "containerPort": config.admin_port, "protocol": "TCP"}],
        "env": [{"name": name, "value": value} for name, value in env.items()],
        "envFrom": [
            *(
                {"configMapRef": {"name": name, "optional": True}}
                for name in config.config_map_names
            ),
            *({"secretRef": {"name": name}} for name in config.secret_names),
        ],
        "resources": config.resources.model_dump(),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_user,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": DATA_VOLUME, "mountPath": DATA_DIR}],
        "startupProbe": {"httpGet": ops, "periodSeconds": 1, "failureThreshold": 60},
        "readinessProbe": {"httpGet": ops, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {
            "httpGet": {**ops, "path": "/healthz"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if config.mode == "native":
        container["restartPolicy"] = "Always"
    else:
        wait = _WAIT_READY.format(port=config.admin_port)
        container["lifecycle"] = {
            "postStart": {"exec": {"command": ["python", "-c", wait]}},
            "preStop": {"exec": {"command": ["sleep", str(config.pre_stop_sleep_seconds)]}},
        }
    return container
