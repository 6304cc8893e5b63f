"""The injection webhook served over real HTTPS, fed AdmissionReview v1 JSON as the API
server sends it; every returned patch is applied with jsonpatch and the resulting pod is
validated strictly against the Kubernetes 1.29 and newest schemas. Pods that would reach
the provider keys are denied; the key pair is reloaded in place, and a broken renewal
keeps the old pair in service."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import kubernetes_validate
import pytest
import structlog
import trustme
from aiohttp import web

from proxy.injector.config import InjectorConfig
from proxy.injector.tls import CertificateReloader
from proxy.injector.webhook import create_webhook_app
from tests.support.sidecar import free_port

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())


def make_pod(*, labels: dict[str, str] | None = None, **spec_extra: Any) -> dict[str, Any]:
    """A pod as a ReplicaSet creates it, defaults filled in by the API server."""
    container = {
        "name": "app",
        "image": "registry.example.com/chat-app:1.4.2",
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": 8000, "name": "http", "protocol": "TCP"}],
        "env": [{"name": "LOG_LEVEL", "value": "info"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "chat-app-7d9c8b6f5-",
            "namespace": "team-a",
            "labels": {"app.kubernetes.io/name": "chat-app", **(labels or {})},
            "annotations": {"kubernetes.io/config.seen": "2026-01-01T00:00:00Z"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "chat-app-7d9c8b6f5",
                    "uid": "0b7a3c52-6f0e-4d8e-9d0e-1f2a3b4c5d6e",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "containers": [container],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "default-scheduler",
            "securityContext": {},
            **spec_extra,
        },
        "status": {},
    }


def review(pod: object, *, operation: str = "CREATE") -> dict[str, Any]:
    """Wrap ``pod`` in an AdmissionReview v1 request as the API server does."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throwaway certificate authority for this module."""
    return trustme.CA()


@pytest.fixture
def key_pair(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    """Server certificate and key files, as cert-manager would mount them."""
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for pem in leaf.cert_chain_pems[1:]:
        pem.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


class Webhook:
    """A running webhook and a client that trusts its CA."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.session = url, session

    async def admit(self, body: object, *, allowed: bool = True) -> dict[str, Any]:
        """POST one review and return its ``response`` after checking the envelope."""
        async with self.session.post(f"{self.url}/mutate", json=body) as reply:
            assert reply.status == 200, await reply.text()
            answer = await reply.json()
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        assert isinstance(body, dict)
        assert answer["response"]["uid"] == body["request"]["uid"]
        assert answer["response"]["allowed"] is allowed
        response: dict[str, Any] = answer["response"]
        return response


RELOAD_INTERVAL = 0.02  # seconds: the tests watch reloads happen instead of waiting 30 s


@pytest.fixture
async def webhook(ca: trustme.CA, key_pair: tuple[str, str]) -> AsyncIterator[Webhook]:
    """The webhook on a free port over TLS, default injector config, reloading quickly."""
    reloader = CertificateReloader(*key_pair)
    app = create_webhook_app(InjectorConfig(), reloader, reload_interval=RELOAD_INTERVAL)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=reloader.context)
    await site.start()
    port = runner.addresses[0][1]
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context)) as s:
        yield Webhook(f"https://127.0.0.1:{port}", s)
    await runner.cleanup()


def apply(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """Apply the response's JSONPatch and check the result is a strictly valid Pod."""
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, ops)
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(patched, version, strict=True)
    return patched


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """A container's plain env as a dict."""
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


async def test_opted_in_pod_gets_native_sidecar_env_and_status(webhook: Webhook) -> None:
    """A labelled pod gets the native sidecar first in initContainers, base URLs, status."""
    pod = make_pod(labels={"llm-sidecar.io/inject": "enabled"})
    patched = apply(pod, await webhook.admit(review(pod)))
    (sidecar,) = patched["spec"]["initContainers"]
    assert sidecar["name"] == "llm-sidecar"
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 9464}
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"secretRef": {"name": "llm-sidecar-provider-keys"}} in sidecar["envFrom"]
    assert env_of(patched["spec"]["containers"][0]) == {
        "LOG_LEVEL": "info",
        "OPENAI_BASE_URL": "http://127.0.0.1:8080/openai/v1",
        "GROQ_BASE_URL": "http://127.0.0.1:8080/groq",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8080/anthropic",
    }
    annotations = patched["metadata"]["annotations"]
    assert annotations["llm-sidecar.io/status"] == "injected"
    assert annotations["prometheus.io/port"] == "9464"
    assert annotations["kubernetes.io/config.seen"] == "2026-01-01T00:00:00Z"
    assert patched["metadata"]["labels"]["llm-sidecar.io/sidecar"] == "true"
    assert {"name": "llm-sidecar-data", "emptyDir": {"sizeLimit": "64Mi"}} in patched["spec"][
        "volumes"
    ]


async def test_opted_out_pod_is_allowed_untouched(webhook: Webhook) -> None:
    """A pod labelled inject=disabled in an opted-in namespace gets no patch."""
    response = await webhook.admit(review(make_pod(labels={"llm-sidecar.io/inject": "disabled"})))
    assert "patch" not in response
    assert "patchType" not in response


async def test_already_injected_pod_gets_no_second_sidecar(webhook: Webhook) -> None:
    """Reinvoking the webhook on its own output changes nothing."""
    pod = make_pod(labels={"llm-sidecar.io/inject": "enabled"})
    patched = apply(pod, await webhook.admit(review(pod)))
    response = await webhook.admit(review(copy.deepcopy(patched)))
    assert "patch" not in response


async def test_app_setting_openai_base_url_keeps_it(webhook: Webhook) -> None:
    """An app that already sets OPENAI_BASE_URL keeps its value; GROQ_BASE_URL is added."""
    pod = make_pod()
    pod["spec"]["containers"][0]["env"].append(
        {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:8080/v1"}
    )
    env = env_of(apply(pod, await webhook.admit(review(pod)))["spec"]["containers"][0])
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:8080/v1"
    assert env["GROQ_BASE_URL"] == "http://127.0.0.1:8080/groq"
    assert list(env).count("OPENAI_BASE_URL") == 1


async def test_existing_init_containers_run_after_the_sidecar(webhook: Webhook) -> None:
    """The sidecar goes before existing init containers so they can use it too."""
    migrate = {"name": "migrate", "image": "registry.example.com/chat-app:1.4.2"}
    pod = make_pod(initContainers=[migrate], volumes=[{"name": "cache", "emptyDir": {}}])
    patched = apply(pod, await webhook.admit(review(pod)))
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["llm-sidecar", "migrate"]
    assert [v["name"] for v in patched["spec"]["volumes"]] == ["cache", "llm-sidecar-data"]
    assert "env" not in patched["spec"]["initContainers"][1]


async def test_pod_lacking_optional_fields_is_patched_validly(webhook: Webhook) -> None:
    """No labels, annotations, env, initContainers or volumes: each is created whole."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bare"},
        "spec": {"containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "x"}]},
    }
    patched = apply(pod, await webhook.admit(review(pod)))
    assert patched["metadata"]["annotations"]["llm-sidecar.io/status"] == "injected"
    assert patched["metadata"]["labels"] == {"llm-sidecar.io/sidecar": "true"}
    for container in patched["spec"]["containers"]:
        assert env_of(container)["GROQ_BASE_URL"] == "http://127.0.0.1:8080/groq"


async def test_container_mode_annotation_puts_sidecar_first_in_containers(
    webhook: Webhook,
) -> None:
    """``llm-sidecar.io/mode: container`` gives an ordinary container that gates app start."""
    pod = make_pod()
    pod["metadata"]["annotations"]["llm-sidecar.io/mode"] = "container"
    patched = apply(pod, await webhook.admit(review(pod)))
    names = [c["name"] for c in patched["spec"]["containers"]]
    assert names == ["llm-sidecar", "app"]
    assert env_of(patched["spec"]["containers"][1])["GROQ_BASE_URL"] == "http://127.0.0.1:8080/groq"
    assert "GROQ_BASE_URL" not in env_of(patched["spec"]["containers"][0])
    assert "initContainers" not in patched["spec"]
    assert patched["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "app"
    assert "postStart" in patched["spec"]["containers"][0]["lifecycle"]


@pytest.mark.parametrize(
    "pod",
    [
        pytest.param({"metadata": {}, "spec": {"containers": "app"}}, id="containers-not-list"),
        pytest.param({"metadata": {}, "spec": {"containers": []}}, id="no-containers"),
        pytest.param(["not", "a", "pod"], id="list"),
        pytest.param(make_pod(hostNetwork=True), id="host-network"),
    ],
)
async def test_pod_it_cannot_understand_is_allowed_with_a_warning(
    webhook: Webhook, pod: object
) -> None:
    """Odd pods are let through unpatched, with a warning kubectl shows the user."""
    response = await webhook.admit(review(pod))
    assert "patch" not in response
    assert response["warnings"][0].startswith("llm-sidecar not injected")


async def test_updates_and_other_kinds_are_left_alone(webhook: Webhook) -> None:
    """Only pod CREATE is mutated, whatever the webhook configuration sends."""
    assert "patch" not in await webhook.admit(review(make_pod(), operation="UPDATE"))
    other = review(make_pod())
    other["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    assert "patch" not in await webhook.admit(other)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'"x"',
        b"[" * 100_000,
        json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}).encode(),
        json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"object": {}},
            }
        ).encode(),
    ],
    ids=["broken", "list", "string", "deep", "v1beta1", "no-uid"],
)
async def test_garbage_body_gets_400_not_500(webhook: Webhook, body: bytes) -> None:
    """Unreadable reviews are answered 400, never 500, and the server stays up."""
    async with webhook.session.post(f"{webhook.url}/mutate", data=body) as reply:
        assert reply.status == 400
    async with webhook.session.get(f"{webhook.url}/healthz") as reply:
        assert reply.status == 200


async def handshake(webhook: Webhook, trusted: trustme.CA) -> bool:
    """Whether a fresh TLS handshake with the webhook verifies against ``trusted`` alone."""
    context = ssl.create_default_context()
    trusted.configure_trust(context)
    port = int(webhook.url.rsplit(":", 1)[1])
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    except ssl.SSLCertVerificationError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def until(condition: Callable[[], bool | Awaitable[bool]], seconds: float = 10.0) -> None:
    """Wait for ``condition`` (checked every reload interval), failing after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        met = condition()
        if met if isinstance(met, bool) else await met:
            return
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(RELOAD_INTERVAL)


def rewrite(path: str, pem: trustme.Blob | bytes) -> None:
    """Replace a mounted file's content with a fresh modification stamp."""
    if isinstance(pem, bytes):
        Path(path).write_bytes(pem)
    else:
        pem.write_to_path(path)
    now = time.time_ns()
    os.utime(path, ns=(now, now))


async def test_renewed_certificate_is_served_without_restart(
    webhook: Webhook, ca: trustme.CA, key_pair: tuple[str, str]
) -> None:
    """After cert-manager rewrites the files, new handshakes present the new certificate."""
    other_ca = trustme.CA()
    renewed = other_ca.issue_cert("127.0.0.1")
    assert await handshake(webhook, ca)
    rewrite(key_pair[1], renewed.private_key_pem)
    rewrite(key_pair[0], renewed.cert_chain_pems[0])
    await until(lambda: handshake(webhook, other_ca))
    assert not await handshake(webhook, ca)


async def test_broken_renewal_keeps_serving_the_old_pair_until_a_good_one_lands(
    webhook: Webhook, ca: trustme.CA, key_pair: tuple[str, str]
) -> None:
    """A half-written certificate or a mismatched key never replaces the served pair."""
    cert, key = key_pair
    other_ca = trustme.CA()
    renewed = other_ca.issue_cert("127.0.0.1")

    def failures() -> list[dict[str, Any]]:
        return [line for line in logs if line["event"].startswith("tls reload failed")]

    with structlog.testing.capture_logs() as logs:
        rewrite(cert, b"-----BEGIN CERTIFICATE-----\nMIIB")
        await until(lambda: len(failures()) == 1)
        assert await handshake(webhook, ca)
        rewrite(cert, renewed.cert_chain_pems[0])  # the new certificate, the old key
        await until(lambda: len(failures()) == 2)
        assert failures()[1]["reason"] == "KEY_VALUES_MISMATCH"
        assert await handshake(webhook, ca)
        await asyncio.sleep(RELOAD_INTERVAL * 5)
        assert len(failures()) == 2, "one line per broken state, not one per look"
        rewrite(key, renewed.private_key_pem)
        await until(lambda: any(line["event"] == "tls key pair reloaded" for line in logs))
    assert await handshake(webhook, other_ca)
    assert not await handshake(webhook, ca)
    assert not [text for text in map(repr, logs) if "-----" in text or "MII" in text]


async def test_image_annotation_outside_the_allow_list_is_denied(webhook: Webhook) -> None:
    """A pod naming its own sidecar image is refused with a message kubectl prints."""
    pod = make_pod()
    pod["metadata"]["annotations"]["llm-sidecar.io/image"] = "attacker.example/keys:1"
    response = await webhook.admit(review(pod), allowed=False)
    assert "patch" not in response
    assert response["status"]["code"] == 403
    assert "llm-sidecar.io/image" in response["status"]["message"]
    assert "attacker.example/keys:1" in response["status"]["message"]


async def test_shared_process_namespace_is_denied(webhook: Webhook) -> None:
    """A pod whose containers could read the sidecar's environment is refused."""
    response = await webhook.admit(review(make_pod(shareProcessNamespace=True)), allowed=False)
    assert "patch" not in response
    assert "shareProcessNamespace" in response["status"]["message"]


async def test_injected_sidecar_reads_only_allowed_settings_keys(webhook: Webhook) -> None:
    """The namespace ConfigMap reaches the sidecar key by key, never through envFrom."""
    pod = make_pod()
    (sidecar,) = apply(pod, await webhook.admit(review(pod)))["spec"]["initContainers"]
    assert all("configMapRef" not in source for source in sidecar["envFrom"])
    keys = [
        item["valueFrom"]["configMapKeyRef"]["key"]
        for item in sidecar["env"]
        if "valueFrom" in item
    ]
    assert keys
    assert not [key for key in keys if "UPSTREAMS" in key.upper()]


def _run_webhook(args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    code = f"from proxy.injector.webhook import run; raise SystemExit(run({args}))"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def injector_config_file(tmp_path: Path) -> Path:
    """A JSON injector config as the ConfigMap mounts it."""
    path = tmp_path / "injector.json"
    path.write_text(json.dumps({"image": "registry.example.com/llm-sidecar:9.9.9"}))
    return path


def test_run_serves_until_sigterm_then_exits_zero(
    ca: trustme.CA, key_pair: tuple[str, str], injector_config_file: Path
) -> None:
    """``run()`` serves /healthz over TLS with the file config and exits 0 on SIGTERM."""
    port = free_port()
    args = f"tls_cert={key_pair[0]!r}, tls_key={key_pair[1]!r}, port={port}, host='127.0.0.1'"
    process = _run_webhook(args, {"LLM_SIDECAR_INJECTOR_CONFIG": str(injector_config_file)})
    context = ssl.create_default_context()
    ca.configure_trust(context)
    deadline = time.monotonic() + 20
    try:
        while True:
            assert process.poll() is None, process.communicate()
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
                ):
                    tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    assert tls.recv(64).startswith(b"HTTP/1.1 200")
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "webhook did not start listening"
                time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('{"mode": "sideways"}', "mode"),
        ('{"image": "a b"}', "image"),
        ("not json", "LLM_SIDECAR_INJECTOR_CONFIG"),
    ],
)
def test_run_with_bad_config_exits_2_with_one_line(
    key_pair: tuple[str, str], tmp_path: Path, config: str, message: str
) -> None:
    """A bad injector config stops start-up with exit code 2 and one line naming the field."""
    path = tmp_path / "bad.json"
    path.write_text(config)
    args = f"tls_cert={key_pair[0]!r}, tls_key={key_pair[1]!r}, port=1"
    process = _run_webhook(args, {"LLM_SIDECAR_INJECTOR_CONFIG": str(path)})
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert len(stderr.strip().splitlines()) == 1
    assert message in stderr
