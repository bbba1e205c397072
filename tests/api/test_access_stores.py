"""The access ports (API keys, idempotency records, tenant plans): memory and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio

from dvt_engine.access import (
    ApiKey,
    ApiRole,
    StoredResponse,
    check_idempotency_ttl,
    hash_api_key,
    looks_like_api_key,
    mint_api_key,
)
from dvt_engine.errors import UsageError
from dvt_engine.eventlog import utc_now
from dvt_engine.stores.memory_access import MemoryAccessStore

DAY = timedelta(days=1)


@pytest_asyncio.fixture(params=["memory", "postgresql"])
async def access(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryAccessStore()
        return
    from dvt_statestore_pg.access import PostgresAccessStore

    url = request.getfixturevalue("dvt_postgres_store_url")
    store = await PostgresAccessStore.open(url)
    try:
        yield store
    finally:
        await store.close()


def _key(tenant: str, *roles: ApiRole) -> tuple[str, ApiKey]:
    key_id, secret = mint_api_key()
    return secret, ApiKey(key_id=key_id, tenant_id=tenant, roles=roles,
                          key_hash=hash_api_key(secret), created_at=utc_now())


def test_minted_keys_are_long_random_and_prefixed() -> None:
    keys = {mint_api_key()[1] for _ in range(100)}
    assert len(keys) == 100
    assert all(looks_like_api_key(k) for k in keys)
    assert all(len(k) - len("dvt_sk_") >= 43 for k in keys)  # 32 bytes in base64url
    assert not looks_like_api_key("dvt_sk_short")
    assert not looks_like_api_key("dvt_sk_" + "é" * 40)


def test_the_idempotency_ttl_is_never_under_a_day() -> None:
    assert check_idempotency_ttl(DAY) == DAY
    with pytest.raises(UsageError):
        check_idempotency_ttl(timedelta(hours=23))


async def test_keys_are_found_by_hash_listed_per_tenant_and_revoked(access: Any) -> None:
    secret, key = _key("t-a", ApiRole.READER, ApiRole.RUNNER)
    _, other = _key("t-b", ApiRole.ADMIN)
    await access.create_key(key)
    await access.create_key(other)
    found = await access.key_by_hash(hash_api_key(secret))
    assert found is not None
    assert (found.key_id, found.tenant_id, found.roles) == (key.key_id, "t-a", key.roles)
    assert found.active
    assert await access.key_by_hash(hash_api_key(secret + "x")) is None
    assert [k.key_id for k in await access.list_keys("t-a")] == [key.key_id]
    assert not await access.revoke_key("t-b", key.key_id)  # not t-b's key
    assert await access.revoke_key("t-a", key.key_id)
    revoked = await access.key_by_hash(hash_api_key(secret))
    assert revoked is not None
    assert not revoked.active


async def test_an_idempotency_key_is_claimed_once_then_replayed(access: Any) -> None:
    assert (await access.claim("t", "k", "h1", ttl=DAY)).state == "new"
    assert (await access.claim("t", "k", "h1", ttl=DAY)).state == "in_flight"
    assert (await access.claim("t", "k", "h2", ttl=DAY)).state == "mismatch"
    assert (await access.claim("other", "k", "h2", ttl=DAY)).state == "new"  # per tenant
    answer = StoredResponse(201, b'{"runId": "r"}', (("Location", "/v1/runs/r"),))
    await access.complete("t", "k", answer)
    done = await access.claim("t", "k", "h1", ttl=DAY)
    assert done.state == "done"
    assert done.response == answer
    assert (await access.claim("t", "k", "h2", ttl=DAY)).state == "mismatch"


async def test_a_released_claim_can_be_taken_again(access: Any) -> None:
    assert (await access.claim("t", "r", "h", ttl=DAY)).state == "new"
    await access.release("t", "r")
    assert (await access.claim("t", "r", "h", ttl=DAY)).state == "new"


async def test_concurrent_claims_have_exactly_one_winner(access: Any) -> None:
    claims = await asyncio.gather(*(access.claim("t", "race", "h", ttl=DAY)
                                    for _ in range(20)))
    states = sorted(c.state for c in claims)
    assert states.count("new") == 1
    assert set(states) == {"new", "in_flight"}


async def test_expired_records_are_purged_and_their_keys_start_afresh(access: Any) -> None:
    assert (await access.claim("t", "old", "h1", ttl=-DAY)).state == "new"
    assert (await access.claim("t", "live", "h1", ttl=DAY)).state == "new"
    assert (await access.claim("t", "old", "h2", ttl=DAY)).state == "new"  # taken over
    assert (await access.claim("t", "gone", "h1", ttl=-DAY)).state == "new"
    assert await access.purge_expired() == 1
    assert (await access.claim("t", "live", "h2", ttl=DAY)).state == "mismatch"
    assert (await access.claim("t", "old", "h1", ttl=DAY)).state == "mismatch"


async def test_plans_are_remembered_per_tenant(access: Any) -> None:
    sha = "b" * 64
    assert await access.remember_plan("t-a", sha)
    assert not await access.remember_plan("t-a", sha)
    assert await access.has_plan("t-a", sha)
    assert not await access.has_plan("t-b", sha)
