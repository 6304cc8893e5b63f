"""The pure injection planner: opt-in rules, overrides, conflicts, JSON Pointer escaping,
the trust boundary (allow-listed images and Secrets, no shared process namespace, no
namespace-controlled upstreams), and properties over generated pods (never raises, patch
applies, idempotent)."""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from proxy.injector.config import DEFAULT_CONFIG_MAP_KEYS, InjectorConfig
from proxy.injector.patch import base_urls, pointer_token
from proxy.injector.policy import image_allowed, plan_injection

OPTED_IN = {"llm-sidecar.io/inject": "enabled"}
DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32


def pod(*containers: dict[str, Any], labels: Any = None, annotations: Any = None) -> dict[str, Any]:
    """A minimal pod; labels/annotations are left out when None."""
    metadata: dict[str, Any] = {"name": "p"}
    if labels is not None:
        metadata["labels"] = labels
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": {"containers": list(containers) or [{"name": "app"}]}}


def injected(source: dict[str, Any], config: InjectorConfig | None = None) -> dict[str, Any]:
    """Plan and apply; fails the test when no patch is planned."""
    plan = plan_injection(source, config or InjectorConfig())
    assert plan.patch, plan.reason
    result: dict[str, Any] = jsonpatch.apply_patch(source, plan.patch)
    return result


def sidecar_of(result: dict[str, Any]) -> dict[str, Any]:
    """The injected container, wherever the mode put it."""
    spec = result["spec"]
    found = [
        c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "llm-sidecar"
    ]
    assert len(found) == 1
    return found[0]


def environment(
    container: dict[str, Any],
    config_maps: dict[str, dict[str, str]],
    secrets: dict[str, dict[str, str]],
) -> dict[str, str]:
    """The variables the kubelet gives ``container``: envFrom in order, then env over it."""
    result: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data = config_maps.get(source["configMapRef"]["name"], {})
        else:
            data = secrets.get(source["secretRef"]["name"], {})
        result.update({source.get("prefix", "") + key: value for key, value in data.items()})
    for item in container.get("env", []):
        if "value" in item:
            result[item["name"]] = item["value"]
            continue
        reference = item["valueFrom"]
        if "configMapKeyRef" in reference:
            ref, store = reference["configMapKeyRef"], config_maps
        else:
            ref, store = reference["secretKeyRef"], secrets
        if (value := store.get(ref["name"], {}).get(ref["key"])) is not None:
            result[item["name"]] = value
    return result


def test_pointer_token_escapes_tilde_before_slash() -> None:
    """RFC 6901: ``~`` becomes ``~0`` first, so ``/`` -> ``~1`` is not double-escaped."""
    assert pointer_token("llm-sidecar.io/status") == "llm-sidecar.io~1status"
    assert pointer_token("a~/b") == "a~0~1b"


def test_keys_with_slashes_land_as_keys_not_paths() -> None:
    """Existing annotations and labels get new keys with ``/`` intact after applying."""
    result = injected(pod(labels={**OPTED_IN}, annotations={"team": "a"}))
    assert result["metadata"]["labels"]["llm-sidecar.io/sidecar"] == "true"
    assert result["metadata"]["annotations"]["llm-sidecar.io/status"] == "injected"
    assert result["metadata"]["annotations"]["team"] == "a"


def test_unlabelled_pod_needs_inject_unlabeled() -> None:
    """With inject_unlabeled off only the pod label opts in."""
    strict = InjectorConfig(inject_unlabeled=False)
    assert plan_injection(pod(), strict).reason == "not opted in"
    assert plan_injection(pod(labels=OPTED_IN), strict).reason == "injected"


def test_existing_prometheus_annotations_are_kept() -> None:
    """An app that already asks to be scraped keeps its own scrape port."""
    mine = {"prometheus.io/scrape": "true", "prometheus.io/port": "8000"}
    result = injected(pod(annotations=mine))
    assert result["metadata"]["annotations"]["prometheus.io/port"] == "8000"


def test_annotations_pick_allowed_image_secrets_and_the_mode() -> None:
    """Per-pod annotations choose among the allowed images and Secrets, and pick the mode."""
    config = InjectorConfig(
        allowed_images=("registry.example.com/llm-sidecar:2.0.0",),
        allowed_secret_names=("team-a-keys", "shared-db"),
    )
    overrides = {
        "llm-sidecar.io/image": "registry.example.com/llm-sidecar:2.0.0",
        "llm-sidecar.io/mode": "container",
        "llm-sidecar.io/secrets": "team-a-keys, shared-db",
    }
    sidecar = sidecar_of(injected(pod(annotations=overrides), config))
    assert sidecar["image"] == "registry.example.com/llm-sidecar:2.0.0"
    assert "restartPolicy" not in sidecar
    secrets = [ref["secretRef"]["name"] for ref in sidecar["envFrom"] if "secretRef" in ref]
    assert secrets == ["team-a-keys", "shared-db"]


def test_bad_mode_annotation_skips_injection_with_a_warning() -> None:
    """A mode the injector does not know leaves the pod alone and says why."""
    plan = plan_injection(pod(annotations={"llm-sidecar.io/mode": "sidecar"}), InjectorConfig())
    assert plan.patch == []
    assert plan.denial is None
    assert "llm-sidecar.io/mode" in plan.warnings[0]


@pytest.mark.parametrize(
    "image",
    [
        "attacker.example/keys-please:1",
        "llm-sidecar:0.1.0-evil",
        f"llm-sidecar:0.1.0@{DIGEST}",
        "registry.example.com/llm-sidecar:2.0.0 ",
        "two words",
    ],
)
def test_image_annotation_outside_the_allow_list_is_refused(image: str) -> None:
    """A pod cannot route the provider keys to an image of its own: admission is denied."""
    plan = plan_injection(pod(annotations={"llm-sidecar.io/image": image}), InjectorConfig())
    assert plan.patch == []
    assert plan.denial is not None
    assert "llm-sidecar.io/image" in plan.denial
    assert "not an allowed sidecar image" in plan.denial


def test_image_annotation_matches_exactly_or_by_repository_and_digest() -> None:
    """An allowed digest admits the same repository at that digest under any tag, no other."""
    config = InjectorConfig(
        image="registry.example.com:5000/llm-sidecar:0.1.0",
        allowed_images=(f"registry.example.com:5000/llm-sidecar@{DIGEST}",),
    )
    assert image_allowed("registry.example.com:5000/llm-sidecar:0.1.0", config)
    assert image_allowed(f"registry.example.com:5000/llm-sidecar@{DIGEST}", config)
    assert image_allowed(f"registry.example.com:5000/llm-sidecar:any@{DIGEST}", config)
    assert not image_allowed(f"registry.example.com:5000/llm-sidecar@{OTHER_DIGEST}", config)
    assert not image_allowed(f"registry.example.com:5000/other@{DIGEST}", config)
    assert not image_allowed(f"attacker.example/llm-sidecar@{DIGEST}", config)
    assert not image_allowed("registry.example.com:5000/llm-sidecar", config)
    assert not image_allowed(f"registry.example.com:5000/llm-sidecar@{DIGEST[:-1]}", config)
    tagged = f"registry.example.com:5000/llm-sidecar:any@{DIGEST}"
    sidecar = sidecar_of(injected(pod(annotations={"llm-sidecar.io/image": tagged}), config))
    assert sidecar["image"] == tagged


@pytest.mark.parametrize("secrets", ["team-b-keys", "llm-sidecar-provider-keys,attacker-urls", ""])
def test_secrets_annotation_outside_the_allow_list_is_refused(secrets: str) -> None:
    """A pod cannot hand the sidecar a Secret of its own (say, one naming other base URLs)."""
    config = InjectorConfig(allowed_secret_names=("team-a-keys",))
    plan = plan_injection(pod(annotations={"llm-sidecar.io/secrets": secrets}), config)
    assert plan.patch == []
    assert plan.denial is not None
    assert "llm-sidecar.io/secrets" in plan.denial


def test_shared_process_namespace_is_refused_by_default() -> None:
    """shareProcessNamespace would let the app read /proc/<pid>/environ of the sidecar."""
    source = pod()
    source["spec"]["shareProcessNamespace"] = True
    plan = plan_injection(source, InjectorConfig())
    assert plan.patch == []
    assert plan.denial is not None
    assert "shareProcessNamespace" in plan.denial


def test_shared_process_namespace_when_allowed_injects_with_a_warning() -> None:
    """With allow_shared_process_namespace the pod is injected and told what it risks."""
    source = pod()
    source["spec"]["shareProcessNamespace"] = True
    plan = plan_injection(source, InjectorConfig(allow_shared_process_namespace=True))
    assert plan.reason == "injected"
    assert plan.denial is None
    assert "shareProcessNamespace" in plan.warnings[0]


def test_host_pid_is_refused_even_when_sharing_is_allowed() -> None:
    """hostPID puts the sidecar's environment within the node's reach: always refused."""
    source = pod()
    source["spec"]["hostPID"] = True
    plan = plan_injection(source, InjectorConfig(allow_shared_process_namespace=True))
    assert plan.denial is not None
    assert "hostPID" in plan.denial


def test_reinvocation_refuses_a_shared_process_namespace_too() -> None:
    """A pod that already has the sidecar is refused if it shares its process namespace."""
    result = injected(pod())
    result["spec"]["shareProcessNamespace"] = True
    assert plan_injection(result, InjectorConfig()).denial is not None


HOSTILE_SETTINGS = {
    "LLM_SIDECAR_UPSTREAMS__OPENAI__BASE_URL": "https://keys.attacker.example",
    "llm_sidecar_upstreams__groq__base_url": "https://keys.attacker.example",
    "LLM_SIDECAR_UPSTREAMS": '{"openai": {"base_url": "https://keys.attacker.example"}}',
    "LLM_SIDECAR_UPSTREAMS__EVIL__FALLBACK": "openai",
    "HTTPS_PROXY": "http://proxy.attacker.example:3128",
    "SSL_CERT_FILE": "/var/run/attacker/ca.pem",
    "LLM_SIDECAR_HOST": "0.0.0.0",
    "OPENAI_API_KEY": "sk-not-the-operators",
    "LLM_SIDECAR_DRAIN_SECONDS": "7",
}


def test_namespace_config_map_cannot_redirect_the_provider_keys() -> None:
    """Of the namespace's settings ConfigMap the sidecar sees only the allowed keys."""
    sidecar = sidecar_of(injected(pod()))
    keys = {"OPENAI_API_KEY": "sk-operator", "LLM_SIDECAR_UPSTREAMS__OPENAI__BASE_URL": "https://a"}
    env = environment(
        sidecar,
        config_maps={"llm-sidecar-settings": HOSTILE_SETTINGS},
        secrets={"llm-sidecar-provider-keys": keys},
    )
    assert env["LLM_SIDECAR_DRAIN_SECONDS"] == "7"
    assert env["OPENAI_API_KEY"] == "sk-operator"
    assert env["LLM_SIDECAR_UPSTREAMS__OPENAI__BASE_URL"] == "https://a"
    from_namespace = {name for name, value in HOSTILE_SETTINGS.items() if env.get(name) == value}
    assert from_namespace == {"LLM_SIDECAR_DRAIN_SECONDS"}
    assert "attacker" not in repr(env)
    from_config_map = [
        item["name"] for item in sidecar["env"] if "configMapKeyRef" in item.get("valueFrom", {})
    ]
    assert tuple(from_config_map) == DEFAULT_CONFIG_MAP_KEYS


def test_operator_env_may_set_upstreams() -> None:
    """The injector's own config is trusted: its env reaches the sidecar as written."""
    url = "https://llm-gateway.internal.example"
    config = InjectorConfig(env={"LLM_SIDECAR_UPSTREAMS__OPENAI__BASE_URL": url})
    env = environment(sidecar_of(injected(pod(), config)), {}, {})
    assert env["LLM_SIDECAR_UPSTREAMS__OPENAI__BASE_URL"] == url


def test_app_mounting_the_sidecar_volume_skips_injection() -> None:
    """An app that mounts the sidecar's data volume by name would share its database."""
    app = {"name": "app", "volumeMounts": [{"name": "llm-sidecar-data", "mountPath": "/x"}]}
    plan = plan_injection(pod(app), InjectorConfig())
    assert plan.patch == []
    assert "llm-sidecar-data" in plan.reason


def test_port_conflict_skips_injection() -> None:
    """An app already listening on the ops port would crash the sidecar: no injection."""
    app = {"name": "app", "ports": [{"containerPort": 9464}]}
    plan = plan_injection(pod(app), InjectorConfig())
    assert plan.patch == []
    assert "ports" in plan.reason


def test_reinvocation_points_late_containers_at_the_sidecar() -> None:
    """When another webhook adds a container after us, reinvocation gives it the base URLs."""
    result = injected(pod())
    result["spec"]["containers"].append({"name": "late"})
    plan = plan_injection(result, InjectorConfig())
    assert plan.reason == "already injected"
    assert [op["path"] for op in plan.patch] == ["/spec/containers/1/env"]


def test_custom_ports_flow_into_env_probes_and_base_urls() -> None:
    """Non-default ports reach the sidecar env, its probes and the app's base URLs."""
    config = InjectorConfig(port=18080, admin_port=19464)
    result = injected(pod(), config)
    sidecar = sidecar_of(result)
    env = {item["name"]: item["value"] for item in sidecar["env"] if "value" in item}
    assert env == {"LLM_SIDECAR_PORT": "18080", "LLM_SIDECAR_ADMIN_PORT": "19464"}
    assert sidecar["readinessProbe"]["httpGet"]["port"] == 19464
    app_env = {item["name"]: item["value"] for item in result["spec"]["containers"][0]["env"]}
    assert app_env == base_urls(18080)


def test_set_base_urls_off_leaves_app_env_alone() -> None:
    """With set_base_urls false the app containers are not touched."""
    result = injected(pod(), InjectorConfig(set_base_urls=False))
    assert "env" not in result["spec"]["containers"][0]


@pytest.mark.parametrize(
    "fields",
    [
        {"env": {"LLM_SIDECAR_PORT": "1"}},
        {"port": 9464},
        {"image_pull_policy": "Sometimes"},
        {"surprise": True},
        {"resources": {"requests": {"gpu": "1"}}},
        {"config_map_keys": ["LLM_SIDECAR_UPSTREAMS__OPENAI__BASE_URL"]},
        {"config_map_keys": ["llm_sidecar_upstreams"]},
        {"config_map_keys": ["HTTPS_PROXY"]},
        {"config_map_keys": ["OPENAI_API_KEY"]},
        {"config_map_keys": ["LLM_SIDECAR_HOST"]},
        {"config_map_keys": ["LLM_SIDECAR_DRAIN_SECONDS", "LLM_SIDECAR_DRAIN_SECONDS"]},
        {"env": {"OTEL_SERVICE_NAME": "x"}},
        {"allowed_images": ["two words"]},
        {"allowed_secret_names": ["Not_A_Name"]},
        {"config_map_names": ["llm-sidecar-settings"]},
    ],
)
def test_config_rejects_nonsense(fields: dict[str, Any]) -> None:
    """The injector config fails fast on values that would make a broken sidecar."""
    with pytest.raises(ValidationError):
        InjectorConfig.model_validate(fields)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=20,
)
names = st.sampled_from(["app", "web", "worker", "llm-sidecar"])
env_lists = st.lists(
    st.builds(
        lambda n, v: {"name": n, "value": v},
        st.sampled_from(["OPENAI_BASE_URL", "GROQ_BASE_URL", "X"]),
        st.text(max_size=3),
    ),
    max_size=3,
)
containers = st.builds(
    lambda name, env: {"name": name} if env is None else {"name": name, "env": env},
    names,
    st.none() | env_lists,
)
string_maps = st.none() | st.dictionaries(
    st.sampled_from(["a", "b/c", "llm-sidecar.io/inject", "llm-sidecar.io/mode", "x~y"]),
    st.sampled_from(["enabled", "disabled", "container", "native", ""]),
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(json_values, json_values)
def test_any_json_never_raises(metadata: Any, spec: Any) -> None:
    """Whatever JSON arrives as a pod, the planner answers instead of raising."""
    plan = plan_injection({"metadata": metadata, "spec": spec}, InjectorConfig())
    assert isinstance(plan.patch, list)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(containers, min_size=1, max_size=3),
    st.none() | st.lists(containers, max_size=2),
    string_maps,
    string_maps,
)
def test_patch_applies_and_second_pass_is_a_no_op(
    apps: list[dict[str, Any]], inits: Any, labels: Any, annotations: Any
) -> None:
    """Any patch applies cleanly, and planning again on the result changes nothing."""
    source = pod(*apps, labels=labels, annotations=annotations)
    if inits is not None:
        source["spec"]["initContainers"] = inits
    config = InjectorConfig()
    plan = plan_injection(source, config)
    result = jsonpatch.apply_patch(source, plan.patch)
    again = plan_injection(result, config)
    assert again.patch == []
    if plan.reason == "injected":
        assert sidecar_of(result)
        for container in result["spec"]["containers"]:
            if container["name"] != "llm-sidecar":
                present = {item["name"] for item in container["env"]}
                assert {"OPENAI_BASE_URL", "GROQ_BASE_URL"} <= present
