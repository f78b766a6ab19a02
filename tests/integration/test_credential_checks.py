"""Verified upstream credentials in a real Valkey: the checks that concurrent requests share."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from proxy.store.credentials import Credentials
from proxy.store.embedded import EmbeddedValkey
from tests.support.clock import FakeClock


@pytest.fixture
async def store(private_valkey: EmbeddedValkey) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(private_valkey.url)
    yield client
    await client.aclose()


async def exists_calls(store: aioredis.Redis) -> int:
    stats = await store.info("commandstats")
    return int(stats.get("cmdstat_exists", {}).get("calls", 0))


async def test_concurrent_requests_of_one_credential_share_one_check(
    store: aioredis.Redis,
) -> None:
    clock = FakeClock()
    credentials = Credentials(store, f"c{uuid.uuid4().hex[:8]}", 300, clock=clock)
    await credentials.accepted("alice")
    await credentials.accepted("bob")
    clock.now += 2  # this replica's own verdicts are over: Redis decides again
    before = await exists_calls(store)
    answers = await asyncio.gather(
        *(credentials.verified("alice") for _ in range(20)),
        *(credentials.verified("bob") for _ in range(5)),
        *(credentials.verified("mallory") for _ in range(5)),
    )
    assert answers == [True] * 25 + [False] * 5
    assert await exists_calls(store) - before == 3  # one per credential, not one per request
    assert credentials.verified_here("alice") and not credentials.verified_here("mallory")


async def test_a_refusal_during_a_check_is_not_undone_by_it(store: aioredis.Redis) -> None:
    clock = FakeClock()
    credentials = Credentials(store, f"c{uuid.uuid4().hex[:8]}", 300, clock=clock)
    await credentials.accepted("alice")
    clock.now += 2
    checking = asyncio.ensure_future(credentials.verified("alice"))
    await asyncio.sleep(0)  # the check's EXISTS is on its way
    await credentials.refused("alice")
    await checking  # whatever it read, it must not keep a local "verified"
    assert not credentials.verified_here("alice")
    assert await credentials.verified("alice") is False
