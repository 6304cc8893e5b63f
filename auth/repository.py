"""open_repository: the one place that turns ``LLM_SIDECAR_DATABASE_URL`` into an adapter."""

from __future__ import annotations

from pathlib import Path

from auth.core.errors import InvalidInput
from auth.core.ports import UserRepository

_SQLITE = "sqlite:///"
_POSTGRES = ("postgresql://", "postgres://")


def open_repository(url: str) -> UserRepository:
    """A repository for ``sqlite:///relative/path``, ``sqlite:////abs/path`` or a
    ``postgresql://`` / ``postgres://`` URL. Nothing connects until first use.

    Raises InvalidInput for anything else; the message never echoes the URL
    (it may hold a password), only its scheme.
    """
    if url.startswith(_SQLITE):
        path = url[len(_SQLITE) :]
        if not path:
            raise InvalidInput("database URL sqlite:/// needs a file path after it")
        from auth.adapters.repo_sqlite import SqliteUserRepository

        return SqliteUserRepository(path if path == ":memory:" else Path(path))
    if url.startswith(_POSTGRES):
        from auth.adapters.repo_postgres import PostgresUserRepository

        return PostgresUserRepository(url)
    scheme = url.partition(":")[0][:20] if "://" in url else "(none)"
    raise InvalidInput(
        f"unsupported database URL scheme {scheme!r}: use sqlite:///path or postgresql://..."
    )
