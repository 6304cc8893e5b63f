"""Errors of the auth hexagon; the composition root maps them to HTTP answers.

::

    AuthError
    ├── InvalidCredentials     401: reason is "missing", "malformed", "unknown" or "disabled"
    ├── RepositoryUnavailable  503: the user repository did not answer (fail closed)
    ├── DuplicateName          admin: a tenant or user by that name already exists
    ├── NotFound               admin: no tenant or user by that name
    ├── TenantNotEmpty         admin: a tenant that still has users cannot be deleted
    └── InvalidInput           admin: a name or limit outside what the schema accepts

Messages never hold a key or a digest: they are shown to callers and logged.
"""

from __future__ import annotations

from typing import Final, Literal

FailureReason = Literal["missing", "malformed", "unknown", "disabled"]
FAILURE_REASONS: Final = frozenset({"missing", "malformed", "unknown", "disabled"})

_MESSAGES: Final[dict[str, str]] = {
    "missing": "missing API key: send 'Authorization: Bearer <sidecar key>'",
    "malformed": "malformed API key",
    "unknown": "invalid API key",
    "disabled": "API key disabled or revoked",
}


class AuthError(Exception):
    """Base of every error the auth package raises on purpose."""


class InvalidCredentials(AuthError):
    """The caller is not who it claims; ``reason`` is a bounded metric label."""

    __slots__ = ("reason",)

    def __init__(self, reason: FailureReason) -> None:
        super().__init__(_MESSAGES[reason])
        self.reason: FailureReason = reason


class RepositoryUnavailable(AuthError):
    """The user repository could not be reached or failed; auth fails closed."""


class DuplicateName(AuthError):
    """A tenant or user with that name already exists."""


class NotFound(AuthError):
    """No tenant or user with that name."""


class TenantNotEmpty(AuthError):
    """A tenant that still has users is only deleted when the caller asks for a cascade."""


class InvalidInput(AuthError):
    """A name or limit the admin service refuses before touching the repository."""


def tenant_not_empty_message(tenant: str, users: int) -> str:
    return (
        f"tenant {tenant!r} still has {users} user(s); "
        "delete it with --cascade to delete them (and revoke their keys) too"
    )
