"""What a pod may ask of the injector, and :func:`plan_injection`, the pure planner.

Three outcomes. A pod the injector does not understand, or cannot serve (host network, a
port or volume clash, a bad mode annotation), is admitted unchanged with a warning: the
webhook never blocks a pod for its own sake. A pod that asks for something that would put
the provider keys within its reach is refused (ADR 0045): an image annotation naming an
image the operator did not allow, a Secrets annotation naming a Secret the operator did
not allow, a process namespace shared with the sidecar. Everything else gets the patch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.injector.config import (
    DATA_VOLUME,
    IMAGE_ANNOTATION,
    INJECT_LABEL,
    MODE_ANNOTATION,
    OPS_PORT_NAME,
    SECRETS_ANNOTATION,
    STATUS_ANNOTATION,
    InjectorConfig,
)
from proxy.injector.patch import base_url_ops, injection_ops
from proxy.injector.pod import Unreadable, mapping, objects, strings

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
_OPT_OUT = f"label the pod {INJECT_LABEL}: disabled to run it without the sidecar"


@dataclass(frozen=True, slots=True)
class InjectionPlan:
    """The webhook's answer: ``patch`` (empty means leave the pod alone) and why.

    ``denial``, when set, refuses the pod with that message instead of admitting it.
    """

    patch: list[dict[str, Any]]
    reason: str
    warnings: tuple[str, ...] = ()
    denial: str | None = None


class _Refused(Exception):
    """The pod asks for something that would expose the provider keys."""


def plan_injection(pod: object, config: InjectorConfig) -> InjectionPlan:
    """Decide whether and how to inject the sidecar into ``pod`` (a Pod object as JSON)."""
    try:
        return _plan(pod, config)
    except Unreadable as exc:
        return InjectionPlan([], f"not understood: {exc}", (f"llm-sidecar not injected: {exc}",))
    except _Refused as exc:
        return InjectionPlan([], "refused", denial=f"llm-sidecar: {exc}")


def image_allowed(image: str, config: InjectorConfig) -> bool:
    """Whether a pod may ask for ``image``: the configured one or an allowed one, spelt the
    same, or naming the same repository and digest (the runtime then ignores any tag)."""
    allowed = (config.image, *config.allowed_images)
    if image in allowed:
        return True
    wanted = _repository_and_digest(image)
    return wanted is not None and any(_repository_and_digest(ref) == wanted for ref in allowed)


def _plan(pod: object, config: InjectorConfig) -> InjectionPlan:
    pod = mapping(pod, "pod")
    metadata = mapping(pod.get("metadata", {}), "metadata")
    labels = strings(metadata.get("labels"), "metadata.labels")
    annotations = strings(metadata.get("annotations"), "metadata.annotations")
    spec = mapping(pod.get("spec"), "spec")
    containers = objects(spec.get("containers"), "spec.containers")
    if not containers:
        raise Unreadable("spec.containers is empty")
    inits = objects(spec.get("initContainers", []), "spec.initContainers")
    volumes = objects(spec.get("volumes", []), "spec.volumes")

    opt_in = labels.get(INJECT_LABEL)
    if opt_in is not None and opt_in != "enabled":
        return InjectionPlan([], "opted out")
    if opt_in is None and not config.inject_unlabeled:
        return InjectionPlan([], "not opted in")
    has_sidecar = any(c.get("name") == config.container_name for c in (*containers, *inits))
    if has_sidecar or annotations.get(STATUS_ANNOTATION) == "injected":
        # Reinvoked after another webhook added containers: point those at us too. A
        # sidecar already in the pod holds the keys, so its process namespace matters.
        warnings = _check_process_namespace(spec, config) if has_sidecar else ()
        return InjectionPlan(base_url_ops(containers, config), "already injected", warnings)
    if spec.get("hostNetwork") is True:
        raise Unreadable("hostNetwork pods share the node's loopback")
    warnings = _check_process_namespace(spec, config)
    config = _with_overrides(config, annotations)
    _check_conflicts(containers, inits, volumes, config)
    return InjectionPlan(injection_ops(pod, containers, config), "injected", warnings)


def _check_process_namespace(spec: Mapping[str, Any], config: InjectorConfig) -> tuple[str, ...]:
    # Any process that shares the sidecar's PID namespace and runs as its user (or holds
    # CAP_SYS_PTRACE) reads /proc/<pid>/environ: the provider keys.
    if spec.get("hostPID") is True:
        raise _Refused(f"hostPID pods expose the sidecar's provider keys to the node; {_OPT_OUT}")
    if spec.get("shareProcessNamespace") is not True:
        return ()
    if not config.allow_shared_process_namespace:
        raise _Refused(
            "shareProcessNamespace: true would let every container of the pod read the "
            f"sidecar's environment, provider keys included; remove it or {_OPT_OUT}"
        )
    return (
        "llm-sidecar: shareProcessNamespace is on, so the pod's containers can read the "
        "sidecar's provider keys (allowed by the injector's allow_shared_process_namespace)",
    )


def _with_overrides(config: InjectorConfig, annotations: Mapping[str, str]) -> InjectorConfig:
    update: dict[str, Any] = {}
    if (image := annotations.get(IMAGE_ANNOTATION)) is not None:
        if not image_allowed(image, config):
            allowed = ", ".join((config.image, *config.allowed_images))
            raise _Refused(
                f"annotation {IMAGE_ANNOTATION} names {image[:200]!r}, which is not an allowed "
                f"sidecar image (the injector's allowed_images: {allowed})"
            )
        update["image"] = image
    if (mode := annotations.get(MODE_ANNOTATION)) is not None:
        if mode not in ("native", "container"):
            raise Unreadable(f"annotation {MODE_ANNOTATION} must be native or container")
        update["mode"] = mode
    if (secrets := annotations.get(SECRETS_ANNOTATION)) is not None:
        names = tuple(name.strip() for name in secrets.split(",") if name.strip())
        allowed_secrets = (*config.secret_names, *config.allowed_secret_names)
        if not names or any(name not in allowed_secrets for name in names):
            raise _Refused(
                f"annotation {SECRETS_ANNOTATION} may only name Secrets the injector allows "
                f"(secret_names and allowed_secret_names: {', '.join(allowed_secrets)})"
            )
        update["secret_names"] = names
    return config.model_copy(update=update) if update else config


def _repository_and_digest(reference: str) -> tuple[str, str] | None:
    name, _, digest = reference.partition("@")
    if not _DIGEST.fullmatch(digest):
        return None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:  # a tag, not a registry port: the port sits before a slash
        name = name[: len(name) - len(last) + last.index(":")]
    return name, digest


def _check_conflicts(
    containers: list[Mapping[str, Any]],
    inits: list[Mapping[str, Any]],
    volumes: list[Mapping[str, Any]],
    config: InjectorConfig,
) -> None:
    if any(volume.get("name") == DATA_VOLUME for volume in volumes):
        raise Unreadable(f"the pod already has a volume named {DATA_VOLUME}")
    for container in (*containers, *inits):
        name = container.get("name")
        for port in objects(container.get("ports"), "container ports"):
            if port.get("name") == OPS_PORT_NAME or port.get("containerPort") in (
                config.port,
                config.admin_port,
            ):
                raise Unreadable(f"container {name} uses the sidecar's ports")
        # A mount of the volume we are about to add would open the sidecar's data to the app.
        mounts = objects(container.get("volumeMounts"), f"volumeMounts of container {name}")
        if any(mount.get("name") == DATA_VOLUME for mount in mounts):
            raise Unreadable(f"container {name} mounts {DATA_VOLUME}, the sidecar's own volume")
