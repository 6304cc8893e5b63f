"""The proxy's ``Authenticator`` port over the auth package's ``AuthService``.

The one place where the proxy meets ``auth`` on the request path: the auth package's
errors become the proxy's (401 with a bounded reason, 503 ``auth_unavailable``).
"""

from __future__ import annotations

from auth.core.errors import InvalidCredentials, RepositoryUnavailable
from auth.core.models import Principal
from auth.core.service import AuthService
from proxy.adapters.metrics_prometheus import SidecarMetrics
from proxy.core.errors import AuthenticationFailed, ServiceUnavailable

_AUTH_MESSAGES = {
    "missing": "Missing API key: send 'Authorization: Bearer <sidecar key>'.",
    "malformed": "Malformed API key.",
    "unknown": "Invalid API key.",
    "disabled": "This API key is disabled.",
}


class RepositoryAuthenticator:
    """The proxy's ``Authenticator`` port over the auth package's ``AuthService``."""

    __slots__ = ("_metrics", "_service")

    def __init__(self, service: AuthService, metrics: SidecarMetrics) -> None:
        self._service = service
        self._metrics = metrics

    async def authenticate(self, authorization: str | None) -> Principal:
        try:
            return await self._service.authenticate(authorization)
        except InvalidCredentials as exc:
            raise AuthenticationFailed(_AUTH_MESSAGES[exc.reason], reason=exc.reason) from None
        except RepositoryUnavailable:
            self._metrics.repository_errors.inc()
            raise ServiceUnavailable(
                "The user repository is unreachable; try again shortly.",
                code="auth_unavailable",
                headers={"Retry-After": "1"},
            ) from None
