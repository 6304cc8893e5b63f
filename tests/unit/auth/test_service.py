"""AuthService: parsing, caching, single-flight, bounded lookups, failing closed."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auth.core import keys
from auth.core.admin import AdminService
from auth.core.errors import FAILURE_REASONS, InvalidCredentials, RepositoryUnavailable
from auth.core.models import Principal
from auth.core.service import AuthService
from tests.support.fakes import FakeClock
from tests.unit.auth.fakes import InstrumentedRepository

TTL = 30.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def repo() -> InstrumentedRepository:
    return InstrumentedRepository()


@pytest.fixture
def service(repo: InstrumentedRepository, clock: FakeClock) -> AuthService:
    return AuthService(repo, cache_ttl_seconds=TTL, clock=clock)


async def _user(repo: InstrumentedRepository, name: str = "alice") -> str:
    admin = AdminService(repo, clock=lambda: 0.0)
    if await repo.get_tenant("acme") is None:
        await admin.create_tenant("acme", rpm=60, tpm=1000, burst=10, allowed_upstreams=["groq"])
    _, key = await admin.create_user(name, tenant="acme")
    return key


async def _reason(service: AuthService, header: str | None) -> str:
    with pytest.raises(InvalidCredentials) as caught:
        await service.authenticate(header)
    return caught.value.reason


async def test_valid_key_resolves_to_principal_with_tenant_limits(
    service: AuthService, repo: InstrumentedRepository
) -> None:
    """A known key yields the user, tenant and the tenant's limits and upstreams."""
    key = await _user(repo)
    principal = await service.authenticate(f"Bearer {key}")
    assert principal == Principal("acme", "alice", 60, 1000, 10, frozenset({"groq"}))


def test_principal_has_exactly_the_caller_protocol_attributes() -> None:
    """Principal structurally matches proxy.core.ports.Caller, nothing more, nothing less."""
    from proxy.core.ports import Caller

    members = {name for name in vars(Caller) if not name.startswith("_")}
    assert {field.name for field in dataclasses.fields(Principal)} == members
    assert not hasattr(Principal("t", "u", None, None, None, None), "__dict__")


async def test_scheme_is_case_insensitive(
    service: AuthService, repo: InstrumentedRepository
) -> None:
    """'bearer' and 'BEARER' work like 'Bearer'; surrounding spaces around the key are ignored."""
    key = await _user(repo)
    assert (await service.authenticate(f"bearer {key}")).user == "alice"
    assert (await service.authenticate(f"BEARER  {key} ")).user == "alice"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Bearer ", "missing"),
        ("Bearer", "malformed"),
        ("Basic dXNlcjpwYXNz", "malformed"),
        ("Bearer sk-openai-looking-key", "malformed"),
        ("Bearer ' OR '1'='1' --", "malformed"),
        ("Bearer llmsc-'; DROP TABLE llm_sidecar_users; --", "malformed"),
        ("Bearer llmsc-\x00" + "A" * 37, "malformed"),
        ("Bearer " + "A" * 10_240, "malformed"),
        ("Bearer llmsc-ключ-ключ-ключ-ключ-ключ-ключ-ключ", "malformed"),
        ("Bearer llmsc-\udcff" + "A" * 37, "malformed"),
    ],
)
async def test_hostile_headers_are_rejected_without_a_lookup(
    service: AuthService, repo: InstrumentedRepository, header: str | None, reason: str
) -> None:
    """Missing and malformed credentials fail with a bounded reason and never reach the DB."""
    assert await _reason(service, header) == reason
    assert repo.lookups == 0


async def test_valid_key_is_cached_until_the_ttl(
    service: AuthService, repo: InstrumentedRepository, clock: FakeClock
) -> None:
    """Repeated calls within the TTL cost one lookup; after it, the repository is asked again."""
    key = await _user(repo)
    for _ in range(5):
        await service.authenticate(f"Bearer {key}")
    assert repo.lookups == 1
    clock.advance(TTL + 0.001)
    await service.authenticate(f"Bearer {key}")
    assert repo.lookups == 2


async def test_unknown_key_is_negatively_cached(
    service: AuthService, repo: InstrumentedRepository, clock: FakeClock
) -> None:
    """A well-formed unknown key is looked up once per TTL, then answered from the cache."""
    header = f"Bearer {keys.generate()}"
    for _ in range(5):
        assert await _reason(service, header) == "unknown"
    assert repo.lookups == 1
    clock.advance(TTL + 0.001)
    assert await _reason(service, header) == "unknown"
    assert repo.lookups == 2


async def test_disable_and_enable_take_effect_within_the_ttl(
    service: AuthService, repo: InstrumentedRepository, clock: FakeClock
) -> None:
    """A disabled user keeps access only until its cache entry expires, then gets 'disabled'."""
    key = await _user(repo)
    await service.authenticate(f"Bearer {key}")
    await repo.set_user_enabled("alice", False)
    clock.advance(TTL - 1)
    await service.authenticate(f"Bearer {key}")  # still cached
    clock.advance(1.001)
    assert await _reason(service, f"Bearer {key}") == "disabled"
    await repo.set_user_enabled("alice", True)
    clock.advance(TTL + 0.001)
    assert (await service.authenticate(f"Bearer {key}")).user == "alice"


async def test_rotation_revokes_the_old_key_within_the_ttl(
    service: AuthService, repo: InstrumentedRepository, clock: FakeClock
) -> None:
    """After rotate, the old key fails once its cache entry expires; the new key works at once."""
    old = await _user(repo)
    await service.authenticate(f"Bearer {old}")
    new = await AdminService(repo).rotate_key("alice")
    assert (await service.authenticate(f"Bearer {new}")).user == "alice"
    clock.advance(TTL + 0.001)
    assert await _reason(service, f"Bearer {old}") == "unknown"


async def test_concurrent_requests_for_one_key_share_one_lookup(
    service: AuthService, repo: InstrumentedRepository
) -> None:
    """Single-flight: 50 concurrent requests with the same unknown key cause one lookup."""
    repo.gate = asyncio.Event()
    header = f"Bearer {keys.generate()}"
    tasks = [asyncio.create_task(_reason(service, header)) for _ in range(50)]
    await asyncio.sleep(0)
    repo.gate.set()
    assert await asyncio.gather(*tasks) == ["unknown"] * 50
    assert repo.lookups == 1


async def test_distinct_keys_are_looked_up_with_bounded_concurrency(
    repo: InstrumentedRepository, clock: FakeClock
) -> None:
    """A burst of 40 distinct unknown keys never has more than 4 lookups in flight."""
    service = AuthService(repo, cache_ttl_seconds=TTL, clock=clock, max_concurrent_lookups=4)
    repo.gate = asyncio.Event()
    tasks = [asyncio.create_task(_reason(service, f"Bearer {keys.generate()}")) for _ in range(40)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert repo.active == 4
    repo.gate.set()
    assert set(await asyncio.gather(*tasks)) == {"unknown"}
    assert repo.lookups == 40
    assert repo.peak_active == 4


async def test_cache_stays_bounded_under_a_flood_and_keeps_valid_keys(
    repo: InstrumentedRepository, clock: FakeClock
) -> None:
    """1000 distinct unknown keys never grow the cache past its bound nor evict a valid key."""
    service = AuthService(repo, cache_ttl_seconds=TTL, clock=clock, max_cache_entries=16)
    key = await _user(repo)
    await service.authenticate(f"Bearer {key}")
    for _ in range(1000):
        await _reason(service, f"Bearer {keys.generate()}")
        assert service.cached_entries <= 17
    before = repo.lookups
    await service.authenticate(f"Bearer {key}")
    assert repo.lookups == before


async def test_expired_entries_are_evicted_first(
    repo: InstrumentedRepository, clock: FakeClock
) -> None:
    """Once entries expire, new ones replace them instead of accumulating."""
    service = AuthService(repo, cache_ttl_seconds=TTL, clock=clock, max_cache_entries=100)
    for _ in range(10):
        await _reason(service, f"Bearer {keys.generate()}")
    clock.advance(TTL + 1)
    await _reason(service, f"Bearer {keys.generate()}")
    assert service.cached_entries == 1


async def test_repository_failure_fails_closed_and_is_not_cached(
    service: AuthService, repo: InstrumentedRepository
) -> None:
    """While the repository is down callers get RepositoryUnavailable; recovery needs no restart."""
    key = await _user(repo)
    repo.failure = RepositoryUnavailable("down")
    with pytest.raises(RepositoryUnavailable):
        await service.authenticate(f"Bearer {key}")
    assert not await service.ready()
    repo.failure = None
    assert await service.ready()
    assert (await service.authenticate(f"Bearer {key}")).user == "alice"


async def test_unexpected_adapter_error_becomes_repository_unavailable(
    service: AuthService, repo: InstrumentedRepository
) -> None:
    """An adapter bug still fails closed as RepositoryUnavailable (503), never as a 500."""
    repo.failure = KeyError("boom")
    with pytest.raises(RepositoryUnavailable):
        await service.authenticate(f"Bearer {keys.generate()}")


async def test_a_cancelled_caller_does_not_cancel_the_shared_lookup(
    service: AuthService, repo: InstrumentedRepository
) -> None:
    """When one waiter goes away, the others sharing its lookup still get their answer."""
    key = await _user(repo)
    repo.gate = asyncio.Event()
    first = asyncio.create_task(service.authenticate(f"Bearer {key}"))
    second = asyncio.create_task(service.authenticate(f"Bearer {key}"))
    await asyncio.sleep(0)
    first.cancel()
    repo.gate.set()
    assert (await second).user == "alice"
    assert first.cancelled()
    assert repo.lookups == 1


async def test_zero_ttl_disables_caching(repo: InstrumentedRepository, clock: FakeClock) -> None:
    """With a TTL of 0 every call asks the repository (revocation is immediate)."""
    service = AuthService(repo, cache_ttl_seconds=0, clock=clock)
    key = await _user(repo)
    await service.authenticate(f"Bearer {key}")
    await service.authenticate(f"Bearer {key}")
    assert repo.lookups == 2


async def test_error_messages_never_contain_the_key(
    service: AuthService, repo: InstrumentedRepository
) -> None:
    """Whatever the reason, the exception text and repr hold no part of the presented key."""
    key = keys.generate()
    for header in (f"Bearer {key}", f"Bearer {key[:-1]}X", f"Basic {key}"):
        with pytest.raises(InvalidCredentials) as caught:
            await service.authenticate(header)
        assert key[6:20] not in str(caught.value)
        assert key[6:20] not in repr(caught.value)


@given(st.one_of(st.none(), st.text(max_size=200), st.text(max_size=60).map("Bearer ".__add__)))
@settings(max_examples=300, deadline=None)
def test_any_header_yields_invalid_credentials_or_a_principal(header: str | None) -> None:
    """Arbitrary header text never raises anything but InvalidCredentials (never a 500)."""

    async def attempt() -> None:
        service = AuthService(InstrumentedRepository(), cache_ttl_seconds=TTL, clock=FakeClock())
        with pytest.raises(InvalidCredentials) as caught:
            await service.authenticate(header)
        assert caught.value.reason in FAILURE_REASONS

    asyncio.run(attempt())
