"""Every manifest under k8s/: strict schema validation for Kubernetes 1.29 through the
newest version kubernetes-validate ships (offline), raw files and kustomize builds alike;
CRDs checked for shape; yamllint; and the settings that make the sidecar and injector work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from packaging.version import Version

from proxy.injector.config import InjectorConfig
from proxy.injector.policy import plan_injection

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
VERSIONS = sorted(
    {".".join(v.split(".")[:2]) for v in all_versions() if Version(v) >= Version("1.29")},
    key=Version,
)
CRD_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/")
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
# YAML under k8s/ that is not a Kubernetes resource: the plain Prometheus rule groups the
# PrometheusRule is generated from, and promtool's unit tests of them (both checked by
# tests/k8s/test_monitoring.py).
NOT_RESOURCES = ("monitoring/rules.yaml", "monitoring/tests/")


def load(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of one file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest_files() -> list[Path]:
    """Complete resources: kustomizations and strategic-merge patches are partial."""
    return sorted(
        p
        for p in K8S.rglob("*.yaml")
        if p.name != "kustomization.yaml"
        and "patch" not in p.name
        and not p.relative_to(K8S).as_posix().startswith(NOT_RESOURCES)
    )


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """``kustomize build`` (or ``kubectl kustomize``) output, skipping if neither exists."""
    if shutil.which("kustomize"):
        argv = ["kustomize", "build", str(directory)]
    elif shutil.which("kubectl"):
        argv = ["kubectl", "kustomize", str(directory)]
    else:
        pytest.skip("neither kustomize nor kubectl is installed")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    """Documents of one kind."""
    return (doc for doc in docs if doc["kind"] == kind)


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The single document of ``kind`` named ``name``."""
    (found,) = [doc for doc in by_kind(docs, kind) if doc["metadata"]["name"] == name]
    return found


def validate_strictly(doc: dict[str, Any]) -> None:
    """Core kinds against every supported version; CRD kinds are checked by shape tests."""
    if doc["apiVersion"].startswith(CRD_GROUPS):
        return
    for version in VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_versions_cover_1_29_to_newest() -> None:
    """The schema range starts at 1.29 (native sidecars) and reaches at least 1.37."""
    assert VERSIONS[0] == "1.29"
    assert Version(VERSIONS[-1]) >= Version("1.37")


def test_strict_validation_can_fail() -> None:
    """A misspelt field is rejected, so passing files mean something."""
    (doc,) = load(K8S / "sidecar" / "poddisruptionbudget.yaml")
    doc["spec"]["minAvailible"] = doc["spec"].pop("minAvailable")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.29", strict=True)


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_raw_manifest_validates_strictly(path: Path) -> None:
    """Each file's resources validate strictly for every version from 1.29 on."""
    docs = load(path)
    assert docs
    for doc in docs:
        validate_strictly(doc)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_kustomize_build_validates_strictly(directory: Path) -> None:
    """Each kustomization builds and its output validates strictly (patches included)."""
    docs = kustomize_build(directory)
    assert docs
    for doc in docs:
        validate_strictly(doc)


def test_yamllint_is_clean() -> None:
    """yamllint (config .yamllint.yaml) finds nothing in k8s/."""
    result = subprocess.run(
        [Path(sys.executable).parent / "yamllint", "--strict", "k8s", ".yamllint.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_crd_resources_have_the_expected_shape() -> None:
    """PodMonitor, Issuers and Certificates carry the fields their operators require."""
    (monitor,) = load(K8S / "monitoring" / "podmonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == {"llm-sidecar.io/sidecar": "true"}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "llm-sidecar-ops"
    assert endpoint["path"] == "/metrics"
    tls = load(K8S / "injector" / "certificate.yaml")
    assert {doc["apiVersion"] for doc in tls} == {"cert-manager.io/v1"}
    issuers = {doc["metadata"]["name"]: doc for doc in by_kind(tls, "Issuer")}
    for issuer in issuers.values():
        assert len({"selfSigned", "ca"} & set(issuer["spec"])) == 1
    for certificate in by_kind(tls, "Certificate"):
        spec = certificate["spec"]
        assert {"secretName", "issuerRef"} <= set(spec)
        assert spec["issuerRef"]["name"] in issuers
        assert spec["issuerRef"]["kind"] == "Issuer"
    assert one(tls, "Certificate", "llm-sidecar-injector-ca")["spec"]["isCA"] is True
    ca_issuer = issuers[
        one(tls, "Certificate", "llm-sidecar-injector")["spec"]["issuerRef"]["name"]
    ]
    assert ca_issuer["spec"]["ca"]["secretName"] == "llm-sidecar-injector-ca"


def test_injector_tls_webhook_service_and_deployment_agree() -> None:
    """Certificate, Service, Secret mount and inject-ca-from name the same things."""
    docs = kustomize_build(K8S / "injector")
    namespace = "llm-sidecar-system"
    webhook_config = one(docs, "MutatingWebhookConfiguration", "llm-sidecar-injector")
    certificate = one(docs, "Certificate", "llm-sidecar-injector")
    service = one(docs, "Service", "llm-sidecar-injector")
    deployment = one(docs, "Deployment", "llm-sidecar-injector")
    annotation = webhook_config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert annotation == f"{namespace}/{certificate['metadata']['name']}"
    assert certificate["metadata"]["namespace"] == namespace
    assert f"{service['metadata']['name']}.{namespace}.svc" in certificate["spec"]["dnsNames"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == certificate["spec"]["secretName"]
    for hook in webhook_config["webhooks"]:
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["failurePolicy"] == "Ignore"
        assert hook["sideEffects"] == "None"
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert 1 <= hook["timeoutSeconds"] <= 5
        assert hook["clientConfig"]["service"] == {
            "name": service["metadata"]["name"],
            "namespace": namespace,
            "path": "/mutate",
            "port": service["spec"]["ports"][0]["port"],
        }
        assert hook["rules"][0]["operations"] == ["CREATE"]
        assert hook["rules"][0]["resources"] == ["pods"]


def test_self_signed_variant_drops_cert_manager() -> None:
    """The no-cert-manager overlay has no cert-manager resources or annotation."""
    docs = kustomize_build(K8S / "injector-self-signed")
    assert not [doc for doc in docs if doc["apiVersion"].startswith("cert-manager.io/")]
    webhook_config = one(docs, "MutatingWebhookConfiguration", "llm-sidecar-injector")
    assert "cert-manager.io/inject-ca-from" not in webhook_config["metadata"].get("annotations", {})


def test_injector_configmap_is_a_valid_injector_config() -> None:
    """The ConfigMap's JSON loads as InjectorConfig and names the injector's own image."""
    docs = load(K8S / "injector" / "configmap.yaml") + load(K8S / "injector" / "deployment.yaml")
    config = InjectorConfig.model_validate_json(
        one(docs, "ConfigMap", "llm-sidecar-injector")["data"]["injector.json"]
    )
    deployment = one(docs, "Deployment", "llm-sidecar-injector")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == config.image
    assert container["args"][0] == "inject-webhook"
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["LLM_SIDECAR_INJECTOR_CONFIG"].endswith("/injector.json")


def test_example_sidecar_is_native_hardened_and_probed() -> None:
    """The hand-written sidecar is a native sidecar with probes, limits and a locked box."""
    (deployment,) = load(K8S / "sidecar" / "deployment.yaml")
    pod = deployment["spec"]["template"]
    (sidecar,) = pod["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["readinessProbe"]["httpGet"]["port"] == "llm-sidecar-ops"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["resources"]["limits"]["memory"]
    security = sidecar["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert {"secretRef": {"name": "llm-sidecar-provider-keys"}} in sidecar["envFrom"]
    assert {"configMapRef": {"name": "llm-sidecar-settings"}} in sidecar["envFrom"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9464"
    (app,) = pod["spec"]["containers"]
    assert "preStop" in app["lifecycle"]


def test_shared_state_variant_adds_the_state_secret() -> None:
    """The PostgreSQL + Redis overlay gives the sidecar its connection Secret last."""
    docs = kustomize_build(K8S / "sidecar-shared-state")
    pod = one(docs, "Deployment", "chat-app")["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["envFrom"][-1] == {"secretRef": {"name": "llm-sidecar-shared-state"}}
    policy = one(docs, "NetworkPolicy", "chat-app")
    ports = {port["port"] for rule in policy["spec"]["egress"] for port in rule["ports"]}
    assert {53, 443, 5432, 6379} <= ports


def injector_config() -> InjectorConfig:
    """The config the shipped injector ConfigMap holds."""
    (configmap,) = load(K8S / "injector" / "configmap.yaml")
    return InjectorConfig.model_validate_json(configmap["data"]["injector.json"])


def demo_pod() -> dict[str, Any]:
    """The demo Deployment's pod template as the Pod the injector is sent."""
    (deployment,) = load(K8S / "demo" / "deployment.yaml")
    template = json.loads(json.dumps(deployment["spec"]["template"]))
    return {"apiVersion": "v1", "kind": "Pod", **template}


def test_shipped_injector_config_holds_the_trust_boundary() -> None:
    """As shipped, pods cannot pick a foreign image or Secret or share their process
    namespace, and the namespace ConfigMap reaches the sidecar only key by key."""
    config = injector_config()
    assert config.allow_shared_process_namespace is False
    for image in config.allowed_images:
        assert "@sha256:" in image, f"{image}: allow images by digest"
    for annotation, value in [
        ("llm-sidecar.io/image", "attacker.example/llm-sidecar:0.1.0"),
        ("llm-sidecar.io/secrets", "llm-sidecar-provider-keys,attacker-urls"),
    ]:
        pod = demo_pod()
        pod["metadata"].setdefault("annotations", {})[annotation] = value
        assert plan_injection(pod, config).denial is not None, annotation
    shared = demo_pod()
    shared["spec"]["shareProcessNamespace"] = True
    assert plan_injection(shared, config).denial is not None
    pod = demo_pod()
    (sidecar,) = jsonpatch.apply_patch(pod, plan_injection(pod, config).patch)["spec"][
        "initContainers"
    ]
    assert all("secretRef" in source for source in sidecar["envFrom"])
    (demo_settings,) = load(K8S / "demo" / "configmap.yaml")
    assert set(demo_settings["data"]) <= set(config.config_map_keys)


@pytest.mark.parametrize("mode", ["native", "container"])
def test_demo_pod_after_injection_validates_strictly(mode: str) -> None:
    """The demo app's pod, as the injector would patch it, is valid for every version."""
    pod = demo_pod()
    plan = plan_injection(pod, injector_config().model_copy(update={"mode": mode}))
    assert plan.reason == "injected"
    validate_strictly(jsonpatch.apply_patch(pod, plan.patch))
