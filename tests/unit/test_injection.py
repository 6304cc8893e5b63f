"""The pure injection planner: opt-in rules, overrides, conflicts, JSON Pointer escaping,
and properties over generated pods (never raises, patch applies, idempotent)."""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from proxy.injection import InjectorConfig, base_urls, plan_injection, pointer_token

OPTED_IN = {"llm-sidecar.io/inject": "enabled"}


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


def test_annotations_override_image_mode_and_secrets() -> None:
    """Per-pod annotations pick the image, the mode and the Secrets."""
    overrides = {
        "llm-sidecar.io/image": "registry.example.com/llm-sidecar:2.0.0",
        "llm-sidecar.io/mode": "container",
        "llm-sidecar.io/secrets": "team-a-keys, shared-db",
    }
    sidecar = sidecar_of(injected(pod(annotations=overrides)))
    assert sidecar["image"] == "registry.example.com/llm-sidecar:2.0.0"
    assert "restartPolicy" not in sidecar
    secrets = [ref["secretRef"]["name"] for ref in sidecar["envFrom"] if "secretRef" in ref]
    assert secrets == ["team-a-keys", "shared-db"]


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("llm-sidecar.io/mode", "sidecar"),
        ("llm-sidecar.io/image", "two words"),
        ("llm-sidecar.io/secrets", "Not_A_Name"),
    ],
)
def test_bad_override_skips_injection_with_a_warning(annotation: str, value: str) -> None:
    """An override the injector cannot honour leaves the pod alone and says why."""
    plan = plan_injection(pod(annotations={annotation: value}), InjectorConfig())
    assert plan.patch == []
    assert annotation in plan.warnings[0]


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
    env = {item["name"]: item["value"] for item in sidecar["env"]}
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
