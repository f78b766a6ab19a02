"""The store under Redis's own memory limit: every ``maxmemory-policy`` the proxy accepts,
on a real Valkey filled past a small ``maxmemory``. Counters, purges by selector and
lookups stay true; ``allkeys-*`` policies are refused at start (or allowed by a setting)."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import pytest

from proxy.core.breaker import CircuitBreaker
from proxy.core.keys import CacheKey
from proxy.store.client import open_redis
from proxy.store.embedded import EmbeddedValkey
from proxy.store.memory_policy import (
    ALLOWED_POLICIES,
    EvictionPolicyError,
    check_policy,
)
from proxy.store.service import AudioCacheService, EntryLabels
from tests.support.proxies import proxy_on
from tests.support.waits import eventually

ENTRY_BYTES = 16 * 1024
ENTRIES = 240  # about 3.8 MB of audio against a 2 MB maxmemory


def key_of(i: int) -> CacheKey:
    return CacheKey(hashlib.sha256(f"phrase {i}".encode()).hexdigest())


async def existing_entries(service: AudioCacheService) -> set[str]:
    """Hex keys of the entries Redis really holds (SCAN, bounded)."""
    found: set[str] = set()
    pattern = f"{service.keyspace.prefix}:*:e:*"
    async for name in service.redis.scan_iter(match=pattern, count=1000):
        found.add(name.decode().rsplit(":", 1)[1])
    return found


@pytest.mark.parametrize("policy", ALLOWED_POLICIES)
async def test_counters_purges_and_lookups_stay_true_when_redis_evicts(
    private_valkey: EmbeddedValkey, policy: str
) -> None:
    redis = open_redis(private_valkey.url)
    try:
        await redis.config_set("maxmemory-policy", policy)
        await redis.config_set("maxmemory", "2mb")
        assert await check_policy(redis, allow_allkeys=False) == policy
        # The breaker would stop trying after a few OOM errors under noeviction.
        service = AudioCacheService(redis, breaker=CircuitBreaker(failure_threshold=10**6))
        audio = {i: os.urandom(ENTRY_BYTES) for i in range(ENTRIES)}
        stored = set()
        for i, body in audio.items():
            voice = "en" if i % 2 else "fr"
            try:
                await service.put(
                    key_of(i), body, media_type="audio/wav", ttl_seconds=3600,
                    labels=EntryLabels(voice=voice, model="tts-1"),
                )  # fmt: skip
            except Exception as exc:
                assert policy == "noeviction", exc  # Redis full: the put fails open
                continue
            stored.add(key_of(i).hex)
        assert stored, "nothing could be stored at all"
        there = await existing_entries(service)
        if policy != "noeviction":
            assert len(there) < len(stored), "the test never made Redis evict"

        async def counters_match() -> bool:
            await service.sweep()
            totals = await service.totals()
            live = await existing_entries(service)
            # Random audio is stored uncompressed: original bytes are its exact size.
            return (
                totals["entries"] == len(live)
                and totals["original_bytes"] == len(live) * ENTRY_BYTES
            )

        await eventually(counters_match, seconds=15, interval=0.2)
        totals = await service.totals()
        # Every stored entry is either still there or counted as evicted.
        assert totals["entries"] + totals["evicted"] == len(stored)

        # Lookups: present entries are served exactly, evicted ones are misses.
        for i, body in audio.items():
            found = await service.fetch(key_of(i))
            assert found is None or found.audio == body

        # A purge by selector removes every matching entry; none is served afterwards.
        await service.purge(voice="en")
        for i in range(1, ENTRIES, 2):
            assert await service.fetch(key_of(i)) is None
        live = await existing_entries(service)
        assert live <= {key_of(i).hex for i in range(0, ENTRIES, 2)}
        await eventually(counters_match, seconds=15, interval=0.2)
    finally:
        await redis.aclose()


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
async def test_allkeys_policies_are_refused_unless_allowed(
    private_valkey: EmbeddedValkey, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis = open_redis(private_valkey.url)
    try:
        await redis.config_set("maxmemory-policy", policy)
        with pytest.raises(EvictionPolicyError, match="volatile-lru") as refused:
            await check_policy(redis, allow_allkeys=False)
        assert policy in str(refused.value)
        assert "redis_allow_allkeys_eviction" in str(refused.value)
        with caplog.at_level(logging.WARNING):
            assert await check_policy(redis, allow_allkeys=True) == policy
        assert "allowed by redis_allow_allkeys_eviction" in caplog.text
    finally:
        await redis.aclose()


async def test_a_redis_that_denies_config_is_logged_not_refused(
    private_valkey: EmbeddedValkey, caplog: pytest.LogCaptureFixture
) -> None:
    admin = open_redis(private_valkey.url)
    try:
        await admin.execute_command(
            "ACL", "SETUSER", "managed", "on", ">secret", "~*", "&*", "+@all", "-config"
        )
        url = private_valkey.url.replace("redis://", "redis://managed:secret@", 1)
        limited: Any = open_redis(url)
        try:
            with caplog.at_level(logging.WARNING):
                assert await check_policy(limited, allow_allkeys=False) is None
            assert "could not check Redis maxmemory-policy" in caplog.text
        finally:
            await limited.aclose()
    finally:
        await admin.aclose()


async def test_the_proxy_does_not_start_on_allkeys_lru(
    upstream: Any, private_valkey: EmbeddedValkey, aiohttp_client: Any
) -> None:
    _fake, url = upstream
    redis = open_redis(private_valkey.url)
    try:
        await redis.config_set("maxmemory-policy", "allkeys-lru")
    finally:
        await redis.aclose()
    with pytest.raises(EvictionPolicyError, match="maxmemory-policy"):
        await proxy_on(aiohttp_client, url, private_valkey.url)
    client = await proxy_on(
        aiohttp_client, url, private_valkey.url, redis_allow_allkeys_eviction=True
    )
    assert (await client.get("/healthz")).status == 200


async def test_a_purge_by_selector_removes_entries_whose_selector_set_was_lost(
    private_valkey: EmbeddedValkey,
) -> None:
    redis = open_redis(private_valkey.url)
    try:
        service = AudioCacheService(redis)
        for i in range(40):
            voice = "en" if i % 2 else "fr"
            await service.put(
                key_of(i), os.urandom(1024), media_type="audio/wav", ttl_seconds=3600,
                labels=EntryLabels(voice=voice, model="tts-1", tenant="acme"),
            )  # fmt: skip
        # As Redis evicting under allkeys-lru would: every voice=en set is gone.
        lost = [name async for name in redis.scan_iter(match="*:sel:voice:en", count=1000)]
        assert lost
        await redis.delete(*lost)
        removed, _ = await service.purge(voice="en", tenant="acme")
        assert removed == 20
        for i in range(40):
            assert (await service.fetch(key_of(i)) is None) == bool(i % 2)
        assert (await service.totals())["entries"] == 20
        assert (await service.repair())["corrected"] == {}
    finally:
        await redis.aclose()
