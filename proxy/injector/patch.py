"""The JSONPatch that adds the sidecar to a pod the policy has accepted.

The patch copes with absent ``metadata``, ``annotations``, ``labels``, ``initContainers``,
``volumes`` and ``env`` fields (JSONPatch cannot append to a list that does not exist) and
escapes ``~`` and ``/`` in keys (RFC 6901), as in ``/metadata/annotations/llm-sidecar.io~1status``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.injector.config import (
    DATA_DIR,
    DATA_VOLUME,
    DEFAULT_CONTAINER_ANNOTATION,
    OPS_PORT_NAME,
    SIDECAR_LABEL,
    STATUS_ANNOTATION,
    InjectorConfig,
)
from proxy.injector.pod import objects

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


def pointer_token(key: str) -> str:
    """Escape one JSON Pointer reference token (RFC 6901: ``~`` first, then ``/``)."""
    return key.replace("~", "~0").replace("/", "~1")


def base_urls(port: int) -> dict[str, str]:
    """The SDK variables that point an app at a sidecar listening on ``port``."""
    origin = f"http://127.0.0.1:{port}"
    return {
        "OPENAI_BASE_URL": f"{origin}/openai/v1",
        "GROQ_BASE_URL": f"{origin}/groq",
        "ANTHROPIC_BASE_URL": f"{origin}/anthropic",
    }


def injection_ops(
    pod: Mapping[str, Any],
    containers: list[Mapping[str, Any]],
    config: InjectorConfig,
) -> list[dict[str, Any]]:
    """Every operation of a first injection into ``pod`` (already read and accepted)."""
    metadata: Mapping[str, Any] = pod.get("metadata", {})
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    spec: Mapping[str, Any] = pod["spec"]
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
    patch += base_url_ops(containers, config)
    where = "/spec/initContainers" if config.mode == "native" else "/spec/containers"
    patch.append(
        _list_add(where, spec.get(where.rsplit("/", 1)[1]), sidecar_container(config), at_end=False)
    )
    return patch


def base_url_ops(
    containers: list[Mapping[str, Any]], config: InjectorConfig
) -> list[dict[str, Any]]:
    """Add the base URLs to every app container that does not set them already."""
    if not config.set_base_urls:
        return []
    wanted = base_urls(config.port)
    ops: list[dict[str, Any]] = []
    for index, container in enumerate(containers):
        if container.get("name") == config.container_name:
            continue
        env = objects(container.get("env"), f"env of container {container.get('name')}")
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


def sidecar_container(config: InjectorConfig) -> dict[str, Any]:
    """The sidecar as ``config`` (already narrowed by the pod's allowed overrides) says."""
    ops = {"path": "/readyz", "port": config.admin_port}
    # Ports are fixed here because probes and base URLs depend on them; the database URL's
    # default (the image points it at DATA_DIR) is left to the Secrets, which env would
    # override. The namespace's ConfigMap reaches the sidecar only key by key, and only the
    # keys the operator listed: envFrom would let it set the upstreams' base URLs.
    env: list[dict[str, Any]] = [
        {"name": name, "value": value}
        for name, value in {
            "LLM_SIDECAR_PORT": str(config.port),
            "LLM_SIDECAR_ADMIN_PORT": str(config.admin_port),
            **config.env,
        }.items()
    ]
    if (settings := config.config_map_name) is not None:
        env += [
            {"name": key, "valueFrom": {"configMapKeyRef": _optional_key(settings, key)}}
            for key in config.config_map_keys
        ]
    container: dict[str, Any] = {
        "name": config.container_name,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": ["serve"],
        "ports": [{"name": OPS_PORT_NAME, "containerPort": config.admin_port, "protocol": "TCP"}],
        "env": env,
        "envFrom": [{"secretRef": {"name": name}} for name in config.secret_names],
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


def _optional_key(config_map: str, key: str) -> dict[str, Any]:
    return {"name": config_map, "key": key, "optional": True}


def _scrape_annotations(port: int) -> dict[str, str]:
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }


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
