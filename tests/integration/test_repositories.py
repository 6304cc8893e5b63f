"""One contract suite for every UserRepository adapter: in-memory, SQLite and PostgreSQL.

PostgreSQL tests use the real server on 127.0.0.1:5432: each test creates its own
database through the ``postgres`` database and drops it afterwards. They skip only
when the server is unreachable outside CI; with ``CI`` set they fail instead.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from auth.adapters.repo_memory import InMemoryUserRepository
from auth.adapters.repo_postgres import PostgresUserRepository
from auth.adapters.repo_sqlite import SqliteUserRepository
from auth.core import keys
from auth.core.admin import AdminService
from auth.core.errors import (
    DuplicateName,
    InvalidCredentials,
    InvalidInput,
    NotFound,
    RepositoryUnavailable,
    TenantNotEmpty,
)
from auth.core.models import Tenant, User
from auth.core.ports import UserRepository
from auth.core.service import AuthService
from auth.repository import open_repository
from tests.support.postgres import PG_ADMIN_DSN, fresh_database

WHEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class Store:
    """Opens repositories onto one storage and reads its raw contents for inspection."""

    open: Callable[[], UserRepository]
    dump: Callable[[], Awaitable[bytes]]
    versions: Callable[[], Awaitable[list[int]]]


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with fresh_database() as url:
        yield url


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened: list[UserRepository] = []

    def track(repo: UserRepository) -> UserRepository:
        opened.append(repo)
        return repo

    if request.param == "memory":
        memory = InMemoryUserRepository()

        async def dump_memory() -> bytes:
            return repr(vars(memory)).encode()

        async def no_versions() -> list[int]:
            return [1, 2, 3]

        yield Store(lambda: memory, dump_memory, no_versions)
    elif request.param == "sqlite":
        path = tmp_path / "nested" / "dir" / "users.db"

        async def dump_file() -> bytes:
            return b"".join(p.read_bytes() for p in path.parent.glob("users.db*"))

        async def sqlite_versions() -> list[int]:
            with sqlite3.connect(path) as conn:
                sql = "SELECT version FROM llm_sidecar_schema_version ORDER BY version"
                return [row[0] for row in conn.execute(sql)]

        yield Store(lambda: track(SqliteUserRepository(path)), dump_file, sqlite_versions)
    else:
        async with fresh_database() as url:

            async def dump_rows() -> bytes:
                conn = await asyncpg.connect(url)
                try:
                    rows = await conn.fetch("SELECT u::text FROM llm_sidecar_users u")
                    rows += await conn.fetch("SELECT t::text FROM llm_sidecar_tenants t")
                finally:
                    await conn.close()
                return "\n".join(row[0] for row in rows).encode()

            async def pg_versions() -> list[int]:
                conn = await asyncpg.connect(url)
                try:
                    sql = "SELECT version FROM llm_sidecar_schema_version ORDER BY version"
                    return [row[0] for row in await conn.fetch(sql)]
                finally:
                    await conn.close()

            yield Store(lambda: track(PostgresUserRepository(url)), dump_rows, pg_versions)
    for repo in opened:
        await repo.close()


@pytest.fixture
async def repo(store: Store) -> UserRepository:
    repo = store.open()
    await repo.migrate()
    return repo


async def _tenant_and_user(repo: UserRepository) -> str:
    admin = AdminService(repo)
    await admin.create_tenant("acme", rpm=60, tpm=9000, burst=5, allowed_upstreams=["openai"])
    _, key = await admin.create_user("alice", tenant="acme")
    return key


async def test_migrations_are_idempotent(store: Store) -> None:
    """Migrating twice, and from a second repository on the same storage, changes nothing."""
    first = store.open()
    await first.migrate()
    await first.create_tenant(Tenant("acme"))
    await first.migrate()
    second = store.open()
    await second.migrate()
    assert [t.name for t in await second.list_tenants()] == ["acme"]


async def test_concurrent_migrations_from_many_sidecars(store: Store) -> None:
    """Five repositories migrating a fresh store at once all succeed (advisory lock on PG)."""
    repos = [store.open() for _ in range(5)]
    await asyncio.gather(*(r.migrate() for r in repos))
    await asyncio.gather(*(r.ping() for r in repos))
    await repos[0].create_tenant(Tenant("acme"))
    assert [t.name for t in await repos[4].list_tenants()] == ["acme"]


async def test_schema_version_is_recorded_once(store: Store) -> None:
    """Repeated and concurrent migrations leave exactly one row per schema version."""
    repos = [store.open() for _ in range(3)]
    await asyncio.gather(*(r.migrate() for r in repos))
    await repos[0].migrate()
    assert await store.versions() == [1, 2, 3]


async def test_tenant_crud(repo: UserRepository) -> None:
    """Create, read, list (sorted), update, delete; duplicates and unknown names are errors."""
    await repo.create_tenant(Tenant("zeta", rpm=1))
    await repo.create_tenant(Tenant("acme", 60, 9000, 5, frozenset({"openai", "groq"})))
    with pytest.raises(DuplicateName):
        await repo.create_tenant(Tenant("acme"))
    assert await repo.get_tenant("acme") == Tenant(
        "acme", 60, 9000, 5, frozenset({"openai", "groq"})
    )
    assert await repo.get_tenant("nobody") is None
    assert [t.name for t in await repo.list_tenants()] == ["acme", "zeta"]
    await repo.update_tenant(Tenant("acme", None, 10, None, frozenset()))
    assert await repo.get_tenant("acme") == Tenant("acme", None, 10, None, frozenset())
    await repo.update_tenant(Tenant("acme"))
    assert (await repo.get_tenant("acme")) == Tenant("acme")
    with pytest.raises(NotFound):
        await repo.update_tenant(Tenant("nobody"))
    await repo.delete_tenant("zeta")
    with pytest.raises(NotFound):
        await repo.delete_tenant("zeta")
    assert [t.name for t in await repo.list_tenants()] == ["acme"]


async def test_users_create_list_get(repo: UserRepository) -> None:
    """Users belong to an existing tenant, names are unique, lists are sorted and filterable."""
    await repo.create_tenant(Tenant("acme"))
    await repo.create_tenant(Tenant("beta"))
    await repo.create_user(User("bob", "beta", True, WHEN), keys.digest(keys.generate()))
    await repo.create_user(User("alice", "acme", True, WHEN), keys.digest(keys.generate()))
    with pytest.raises(DuplicateName):
        await repo.create_user(User("alice", "beta", True, WHEN), keys.digest(keys.generate()))
    with pytest.raises(NotFound):
        await repo.create_user(User("carol", "nobody", True, WHEN), keys.digest(keys.generate()))
    assert [u.name for u in await repo.list_users()] == ["alice", "bob"]
    assert await repo.list_users("beta") == [User("bob", "beta", True, WHEN)]
    assert await repo.get_user("alice") == User("alice", "acme", True, WHEN)
    assert await repo.get_user("carol") is None


async def test_find_key_joins_user_and_tenant(repo: UserRepository) -> None:
    """A digest resolves to the user's principal with its tenant's limits; others to None."""
    key = await _tenant_and_user(repo)
    record = await repo.find_key(keys.digest(key))
    assert record is not None
    assert record.enabled
    assert record.key_digest == keys.digest(key)
    principal = record.principal
    assert (principal.tenant, principal.user, principal.rpm, principal.tpm) == (
        "acme",
        "alice",
        60,
        9000,
    )
    assert (principal.burst, principal.allowed_upstreams) == (5, frozenset({"openai"}))
    assert await repo.find_key(keys.digest(keys.generate())) is None


async def test_disable_and_enable(repo: UserRepository) -> None:
    """Disabling keeps the record but marks it; enabling restores it; unknown names fail."""
    key = await _tenant_and_user(repo)
    await repo.set_user_enabled("alice", False)
    record = await repo.find_key(keys.digest(key))
    assert record is not None
    assert not record.enabled
    await repo.set_user_enabled("alice", True)
    record = await repo.find_key(keys.digest(key))
    assert record is not None
    assert record.enabled
    with pytest.raises(NotFound):
        await repo.set_user_enabled("nobody", False)


async def test_rotate_revokes_the_old_key(repo: UserRepository) -> None:
    """After rotation the old digest resolves to nothing and the new one to the user."""
    old = await _tenant_and_user(repo)
    new = await AdminService(repo).rotate_key("alice")
    assert await repo.find_key(keys.digest(old)) is None
    record = await repo.find_key(keys.digest(new))
    assert record is not None
    assert record.principal.user == "alice"
    with pytest.raises(NotFound):
        await repo.rotate_key("nobody", keys.digest(keys.generate()))


async def test_tenant_with_users_is_only_deleted_with_cascade(repo: UserRepository) -> None:
    """Deleting a tenant that has users is refused; with cascade its users and keys go too."""
    key = await _tenant_and_user(repo)
    with pytest.raises(TenantNotEmpty):
        await repo.delete_tenant("acme")
    assert await repo.find_key(keys.digest(key)) is not None
    await repo.delete_tenant("acme", cascade=True)
    assert await repo.find_key(keys.digest(key)) is None
    assert await repo.list_users() == []
    assert await repo.list_tenants() == []


async def test_sql_metacharacters_in_names_are_stored_literally(repo: UserRepository) -> None:
    """Names are bound parameters: quotes, semicolons and comments round-trip as plain text."""
    name = "acme'); DROP TABLE llm_sidecar_users; --"
    await repo.create_tenant(Tenant(name))
    await repo.create_user(User('x" OR 1=1 --', name, True, WHEN), keys.digest(keys.generate()))
    assert [t.name for t in await repo.list_tenants()] == [name]
    assert [u.name for u in await repo.list_users(name)] == ['x" OR 1=1 --']
    assert await repo.find_key("' OR '1'='1") is None


HOSTILE_HEADERS = [
    "Bearer ' OR '1'='1",
    "Bearer llmsc-' OR 1=1; DROP TABLE llm_sidecar_users; --aaaaaaaaaa",
    "Bearer llmsc-\x00\x00\x00",
    "Bearer " + "\x00" * 44,
    "Bearer " + "k" * 10_240,
    "Bearer llmsc-ключключключключключключключключкл",
    "Bearer llmsc-🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑",
    "Bearer llmsc-\udcff\udcfe",
    "Bearer llmsc-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
]


async def test_hostile_keys_are_rejected_cleanly(repo: UserRepository) -> None:
    """Injection strings, NUL, 10 KB and non-ASCII keys end in InvalidCredentials, nothing else."""
    await _tenant_and_user(repo)
    service = AuthService(repo, cache_ttl_seconds=30)
    for header in HOSTILE_HEADERS:
        with pytest.raises(InvalidCredentials):
            await service.authenticate(header)
    assert [u.name for u in await repo.list_users()] == ["alice"]


async def test_end_to_end_through_auth_service(repo: UserRepository) -> None:
    """A created key authenticates; a well-formed unknown key gets 'unknown'."""
    key = await _tenant_and_user(repo)
    service = AuthService(repo, cache_ttl_seconds=30)
    assert (await service.authenticate(f"Bearer {key}")).tenant == "acme"
    with pytest.raises(InvalidCredentials) as caught:
        await service.authenticate(f"Bearer {keys.generate()}")
    assert caught.value.reason == "unknown"
    assert await service.ready()


async def test_raw_key_is_never_stored(store: Store, repo: UserRepository) -> None:
    """The storage holds the key's digest, never the key itself (nor its random body)."""
    key = await _tenant_and_user(repo)
    rotated = await AdminService(repo).rotate_key("alice")
    raw = await store.dump()
    assert keys.digest(rotated).encode() in raw
    for secret in (key, rotated):
        assert secret.encode() not in raw
        assert secret[6:30].encode() not in raw


async def test_sqlite_file_and_parent_directories_are_created(tmp_path: Path) -> None:
    """sqlite:/// URLs create the file (and missing directories) on first use."""
    path = tmp_path / "a" / "b" / "users.db"
    repo = open_repository(f"sqlite:///{path}")
    try:
        await repo.ping()
        assert path.exists()
    finally:
        await repo.close()


async def test_unreachable_sqlite_path_is_repository_unavailable(tmp_path: Path) -> None:
    """A path that cannot be a database (under a regular file) fails closed, then reports down."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    repo = SqliteUserRepository(blocker / "users.db")
    try:
        with pytest.raises(RepositoryUnavailable):
            await repo.find_key(keys.digest(keys.generate()))
        assert not await AuthService(repo, cache_ttl_seconds=1).ready()
    finally:
        await repo.close()


async def test_unreachable_postgres_is_repository_unavailable() -> None:
    """Nothing listening: every call raises RepositoryUnavailable, never a driver error."""
    repo = PostgresUserRepository(
        "postgresql://postgres:hunter2@127.0.0.1:1/x", connect_timeout_seconds=1
    )
    try:
        with pytest.raises(RepositoryUnavailable) as caught:
            await repo.find_key(keys.digest(keys.generate()))
        assert "hunter2" not in str(caught.value)
        assert "hunter2" not in repr(repo)
        assert not await AuthService(repo, cache_ttl_seconds=1).ready()
    finally:
        await repo.close()


@pytest.mark.postgres
async def test_postgres_recovers_after_connections_are_killed(pg_url: str) -> None:
    """When the server drops every connection, the pool reconnects by itself on later calls."""
    repo = PostgresUserRepository(pg_url)
    try:
        key = await _tenant_and_user(repo)
        name = pg_url.rsplit("/", 1)[1]
        killer = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await killer.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
        finally:
            await killer.close()
        failures = 0
        for _ in range(3):
            try:
                record = await repo.find_key(keys.digest(key))
            except RepositoryUnavailable:
                failures += 1
            else:
                break
        assert failures <= 1  # only the call that met the dead connection fails
        assert record is not None
        assert record.principal.user == "alice"
    finally:
        await repo.close()


@pytest.mark.parametrize(
    "url", ["mysql://root:s3cret@db/users", "sqlite://relative", "users.db", "sqlite:///"]
)
def test_open_repository_rejects_other_urls_without_echoing_them(url: str) -> None:
    """Unsupported URLs get a clear error that never repeats a password from the URL."""
    with pytest.raises(InvalidInput) as caught:
        open_repository(url)
    assert "s3cret" not in str(caught.value)


def test_open_repository_picks_the_adapter_by_scheme(tmp_path: Path) -> None:
    """sqlite:///rel, sqlite:////abs, postgresql:// and postgres:// map to the right adapter."""
    assert isinstance(open_repository("sqlite:///rel/users.db"), SqliteUserRepository)
    assert isinstance(open_repository(f"sqlite:///{tmp_path}/u.db"), SqliteUserRepository)
    assert isinstance(open_repository("postgresql://u@h/db"), PostgresUserRepository)
    assert isinstance(open_repository("postgres://u@h/db"), PostgresUserRepository)
