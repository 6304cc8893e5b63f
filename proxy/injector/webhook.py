"""The mutating admission webhook that injects the sidecar: HTTPS, AdmissionReview v1.

``POST /mutate`` admits every readable review (plus a JSONPatch when
:func:`proxy.injector.policy.plan_injection` has one), except a pod the policy refuses
because it would reach the provider keys (ADR 0045): that one gets ``allowed: false``
and a 403 status whose message kubectl prints. An unreadable body gets a 400 (the API
server then applies ``failurePolicy: Ignore``). ``GET /healthz`` is for the kubelet.
The TLS key pair is re-read when its files change (:mod:`proxy.injector.tls`).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
from collections.abc import Mapping
from typing import Any

import structlog
from aiohttp import web

from proxy.injector.config import InjectorConfig, InjectorConfigError, load_injector_config
from proxy.injector.policy import InjectionPlan, plan_injection
from proxy.injector.tls import RELOAD_INTERVAL, CertificateReloader

ADMISSION_API = "admission.k8s.io/v1"
MAX_REVIEW_BYTES = 8 * 1024 * 1024  # pods plus oldObject stay well under this
CONFIG_KEY = web.AppKey("injector_config", InjectorConfig)
_log = structlog.get_logger("llm_sidecar.injector")


def create_webhook_app(
    config: InjectorConfig,
    reloader: CertificateReloader | None = None,
    *,
    reload_interval: float = RELOAD_INTERVAL,
) -> web.Application:
    """The webhook's routes; serve it with ``reloader.context`` (the API server requires
    TLS), and the app re-reads the key pair every ``reload_interval`` seconds."""
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app[CONFIG_KEY] = config
    app.router.add_post("/mutate", _mutate)
    app.router.add_get("/healthz", _healthz)
    if reloader is not None:
        app.cleanup_ctx.append(reloader.watcher(reload_interval))
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _mutate(request: web.Request) -> web.Response:
    try:
        review = json.loads(await request.read())
    except (ValueError, RecursionError):
        return _bad_request("body is not JSON")
    admission = review.get("request") if isinstance(review, dict) else None
    if (
        not isinstance(admission, dict)
        or review.get("apiVersion") != ADMISSION_API
        or review.get("kind") != "AdmissionReview"
    ):
        return _bad_request(f"expected an {ADMISSION_API} AdmissionReview with a request")
    uid = admission.get("uid")
    if not isinstance(uid, str) or not uid:
        return _bad_request("request.uid is missing")
    try:
        plan = _review(admission, request.app[CONFIG_KEY])
    except Exception:
        # A bug must not block pods: log it and let the pod through untouched (no sidecar,
        # so no keys either).
        _log.exception("admission failed", uid=uid)
        plan = InjectionPlan([], "injector error")
    answer: dict[str, Any] = {"uid": uid, "allowed": plan.denial is None}
    if plan.denial is not None:
        answer["status"] = {"code": 403, "reason": "Forbidden", "message": plan.denial}
    if plan.patch:
        answer["patchType"] = "JSONPatch"
        answer["patch"] = base64.b64encode(json.dumps(plan.patch).encode()).decode()
    if plan.warnings:
        answer["warnings"] = list(plan.warnings)
    return web.json_response(
        {"apiVersion": ADMISSION_API, "kind": "AdmissionReview", "response": answer}
    )


def _review(admission: Mapping[str, Any], config: InjectorConfig) -> InjectionPlan:
    kind = admission.get("kind")
    pod = admission.get("object")
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    name = (
        (metadata.get("name") or metadata.get("generateName"))
        if isinstance(metadata, dict)
        else None
    )
    fields = {"uid": admission.get("uid"), "namespace": admission.get("namespace"), "pod": name}
    if not isinstance(kind, dict) or kind.get("kind") != "Pod" or kind.get("group") != "":
        plan = InjectionPlan([], "not a pod")
    elif admission.get("operation") != "CREATE":
        plan = InjectionPlan([], "not a create")
    else:
        plan = plan_injection(pod, config)
    if plan.denial is not None:
        _log.warning("admission", outcome=plan.reason, problem=plan.denial, **fields)
    else:
        log = _log.warning if plan.warnings else _log.info
        log("admission", outcome=plan.reason, patch_ops=len(plan.patch), **fields)
    return plan


def _bad_request(message: str) -> web.Response:
    _log.warning("admission rejected", problem=message)
    return web.Response(status=400, text=message + "\n")


def run(
    *,
    tls_cert: str,
    tls_key: str,
    port: int,
    host: str = "0.0.0.0",
    reload_interval: float = RELOAD_INTERVAL,
) -> int:
    """Serve the webhook until SIGTERM/SIGINT; the exit code for ``llm-sidecar inject-webhook``."""
    try:
        config = load_injector_config(os.environ)
        reloader = CertificateReloader(tls_cert, tls_key)
    except InjectorConfigError as exc:
        print(f"llm-sidecar inject-webhook: {exc}", file=sys.stderr)
        return 2
    except (OSError, ssl.SSLError) as exc:
        print(f"llm-sidecar inject-webhook: cannot load the TLS key pair: {exc}", file=sys.stderr)
        return 2
    app = create_webhook_app(config, reloader, reload_interval=reload_interval)
    try:
        web.run_app(
            app,
            host=host,
            port=port,
            ssl_context=reloader.context,
            print=None,
            access_log=None,
            shutdown_timeout=5,
        )
    except OSError as exc:
        print(f"llm-sidecar inject-webhook: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0
