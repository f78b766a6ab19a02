"""The hot tier on real replicas: two proxy apps on one real Valkey, a real loopback upstream.

Whatever one replica deletes, purges, clears or overwrites, the other stops serving from its
hot tier within a second; expired entries are never served; the tier stays within its bytes.
(With its Valkey killed or hung: tests/process/test_hot_tier_faults.py.)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from proxy.core.keys import CacheKey
from proxy.store.service import EntryLabels
from tests.support.hot_replicas import BOUND, hot_of, make_hot, replicas, speak
from tests.support.loopback_upstream import fake_wav
from tests.support.proxies import ProxyFactory, service_of
from tests.support.waits import eventually


async def test_a_delete_on_one_replica_reaches_the_others_hot_tier(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = upstream
    a, b = await replicas(make_proxy, url)
    key = await make_hot(b, "Welcome to the hotel")
    calls = fake.calls["openai"]
    assert await service_of(a).delete(CacheKey(key))
    await eventually(lambda: key not in hot_of(b), BOUND)
    _, x_cache, _ = await speak(b, "Welcome to the hotel")
    assert x_cache == "MISS" and fake.calls["openai"] == calls + 1


async def test_purges_and_clear_reach_the_others_hot_tier(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    a, b = await replicas(make_proxy, url)
    nova = await make_hot(b, "Breakfast is at seven", voice="nova")
    alloy = await make_hot(b, "Breakfast is at seven", voice="alloy")
    removed, _ = await service_of(a).purge(voice="nova")
    assert removed == 1
    await eventually(lambda: nova not in hot_of(b), BOUND)
    assert alloy in hot_of(b), "a purge by voice leaves other voices"
    await service_of(a).purge()  # clear everything
    await eventually(lambda: alloy not in hot_of(b), BOUND)


async def test_an_overwrite_elsewhere_is_never_answered_with_the_old_audio(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    a, b = await replicas(make_proxy, url)
    text = "Checkout is at noon"
    key = await make_hot(b, text)
    old = fake_wav(text, "alloy", "tts-1|wav|None")
    new = b"RIFF" + b"\x01" * 3000
    await service_of(a).put(
        CacheKey(key),
        new,
        media_type="audio/wav",
        ttl_seconds=600,
        labels=EntryLabels(route="openai", voice="alloy", model="tts-1"),
    )
    await eventually(lambda: key not in hot_of(b), BOUND)
    for _ in range(6):  # read back from Redis, admitted again, served hot: always the new
        body, x_cache, _ = await speak(b, text)
        assert x_cache == "HIT"
        assert body == new and body != old


async def test_the_hot_tier_honours_the_entry_expiry(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    a, b = await replicas(make_proxy, url)
    key = CacheKey("ab" * 32)
    audio = b"RIFF" + b"\x02" * 2000
    await service_of(a).put(key, audio, media_type="audio/wav", ttl_seconds=1, labels=EntryLabels())
    store = service_of(b)
    for _ in range(3):
        assert (await store.get(key)) is not None
    assert key.hex in hot_of(b)
    expires_ms = hot_of(b)._residents[key.hex].entry.expires_ms
    await asyncio.sleep(max(0.0, expires_ms / 1000 - time.time()) + 0.05)  # until it expires
    assert (await store.get(key)) is None
    assert key.hex not in hot_of(b)


async def test_the_hot_tier_stays_within_its_bytes(upstream: Any, make_proxy: ProxyFactory) -> None:
    _, url = upstream
    a, _ = await replicas(make_proxy, url, audio_cache_hot_tier_mb=0.05)
    hot = hot_of(a)
    for i in range(40):
        for _ in range(3):
            await speak(a, f"Room {i} is ready")
            assert hot.bytes <= hot.max_bytes
    assert 0 < len(hot) < 40


async def test_disabled_hot_tier(upstream: Any, make_proxy: ProxyFactory) -> None:
    _, url = upstream
    client = await make_proxy(url, audio_cache_hot_tier_mb=0)
    assert service_of(client).hot is None
    await speak(client, "No hot tier here")
    _, x_cache, _ = await speak(client, "No hot tier here")
    assert x_cache == "HIT"


async def test_after_the_store_was_out_of_reach_the_hot_tier_starts_empty(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    """As in a cluster failover: a master dies, writes it had not replicated are lost, and
    the invalidation channel, on another node, stays up. What the tier holds from before may
    be gone from the store, where no purge would find it: it is not served from memory."""
    _, url = upstream
    a, _ = await replicas(make_proxy, url, redis_breaker_reset_seconds=0.1)
    text = "The spa is on the second floor"
    key = CacheKey(await make_hot(a, text))
    service = service_of(a)
    # The entry lost by the failover (with no one to publish it) ...
    await service.redis.delete(service.keyspace.entry(key))
    # ... and the store out of reach meanwhile.
    for _ in range(service.breaker.failure_threshold):
        service.breaker.failure()
    assert service.breaker.is_open
    # The background jobs' next call is the probe that closes it (no request for the text:
    # its miss would store it again).
    await eventually(lambda: not service.breaker.is_open, what="the breaker stayed open")
    _, x_cache, _ = await speak(a, text)
    assert x_cache == "MISS"  # from the upstream, not the tier's copy of the lost entry
    assert hot_of(a).live
