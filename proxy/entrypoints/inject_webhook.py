"""The mutating admission webhook that injects the sidecar: HTTPS, AdmissionReview v1.

``POST /mutate`` answers every readable review with ``allowed: true`` (plus a JSONPatch
when :func:`proxy.injection.plan_injection` has one), so a pod is never blocked here;
an unreadable body gets a 400 (the API server then applies ``failurePolicy: Ignore``).
``GET /healthz`` is for the kubelet. The TLS key pair is re-read when its files change,
so a certificate renewed by cert-manager is served without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from proxy.injection import InjectionPlan, InjectorConfig, plan_injection

CONFIG_ENV = "LLM_SIDECAR_INJECTOR_CONFIG"
ADMISSION_API = "admission.k8s.io/v1"
MAX_REVIEW_BYTES = 8 * 1024 * 1024  # pods plus oldObject stay well under this
CONFIG_KEY = web.AppKey("injector_config", InjectorConfig)
_log = structlog.get_logger("llm_sidecar.injector")


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


def create_webhook_app(config: InjectorConfig) -> web.Application:
    """The webhook's routes; serve it with an SSL context (the API server requires TLS)."""
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app[CONFIG_KEY] = config
    app.router.add_post("/mutate", _mutate)
    app.router.add_get("/healthz", _healthz)
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
        # A bug must not block pods: log it and let the pod through untouched.
        _log.exception("admission failed", uid=uid)
        plan = InjectionPlan([], "injector error")
    answer: dict[str, Any] = {"uid": uid, "allowed": True}
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
    log = _log.warning if plan.warnings else _log.info
    log("admission", outcome=plan.reason, patch_ops=len(plan.patch), **fields)
    return plan


def _bad_request(message: str) -> web.Response:
    _log.warning("admission rejected", problem=message)
    return web.Response(status=400, text=message + "\n")


class CertificateReloader:
    """Re-reads the key pair into ``context`` when the files' modification stamps change.

    New TLS handshakes use the new pair; open connections keep theirs.
    """

    __slots__ = ("_cert", "_context", "_key", "_stamp")

    def __init__(self, context: ssl.SSLContext, cert: str, key: str) -> None:
        self._context, self._cert, self._key = context, cert, key
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> tuple[int, ...]:
        cert, key = os.stat(self._cert), os.stat(self._key)
        return (cert.st_mtime_ns, cert.st_size, key.st_mtime_ns, key.st_size)

    def check(self) -> bool:
        """Reload if the files changed; True when a new pair is now served."""
        try:
            stamp = self._read_stamp()
            if stamp == self._stamp:
                return False
            self._context.load_cert_chain(self._cert, self._key)
        except (OSError, ssl.SSLError) as exc:
            # Mid-rotation the pair may be inconsistent: keep serving the old one.
            _log.warning("tls reload failed", error=type(exc).__name__)
            return False
        self._stamp = stamp
        _log.info("tls key pair reloaded")
        return True

    def watcher(self, interval: float = 30.0) -> Callable[[web.Application], AsyncIterator[None]]:
        """A ``cleanup_ctx`` entry that polls :meth:`check` every ``interval`` seconds."""

        async def watch(app: web.Application) -> AsyncIterator[None]:
            async def loop() -> None:
                while True:
                    await asyncio.sleep(interval)
                    self.check()

            task = asyncio.create_task(loop())
            yield
            task.cancel()

        return watch


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.2+ server context holding the webhook's key pair."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def run(*, tls_cert: str, tls_key: str, port: int, host: str = "0.0.0.0") -> int:
    """Serve the webhook until SIGTERM/SIGINT; the exit code for ``llm-sidecar inject-webhook``."""
    try:
        config = load_injector_config(os.environ)
        context = server_ssl_context(tls_cert, tls_key)
    except InjectorConfigError as exc:
        print(f"llm-sidecar inject-webhook: {exc}", file=sys.stderr)
        return 2
    except (OSError, ssl.SSLError) as exc:
        print(f"llm-sidecar inject-webhook: cannot load the TLS key pair: {exc}", file=sys.stderr)
        return 2
    app = create_webhook_app(config)
    app.cleanup_ctx.append(CertificateReloader(context, tls_cert, tls_key).watcher())
    try:
        web.run_app(
            app,
            host=host,
            port=port,
            ssl_context=context,
            print=None,
            access_log=None,
            shutdown_timeout=5,
        )
    except OSError as exc:
        print(f"llm-sidecar inject-webhook: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0
