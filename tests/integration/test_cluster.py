"""The store and the proxy on a single Valkey and on a real 3-master Valkey cluster.

The store tests run twice (``redis_url`` is parametrized): once against the session's single
server, once against a local 3-master cluster started from the pip-installed binaries.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import RedisError

from proxy.app import SETTINGS
from proxy.core.keys import CacheKey
from proxy.store.client import open_redis
from proxy.store.embedded import EmbeddedValkey
from proxy.store.service import SHARDS, AudioCacheService, EntryLabels, Keyspace
from tests.support.cluster import ValkeyCluster
from tests.support.hot_replicas import hot_of, make_hot, replicas
from tests.support.proxies import ProxyFactory, service_of
from tests.support.speech import SPEECH_PATH, speech_body
from tests.support.waits import eventually


def _key(i: int | str) -> CacheKey:
    return CacheKey(hashlib.sha256(str(i).encode()).hexdigest())


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """Overrides conftest's: every test here runs on one server and on the cluster."""
    if request.param == "single":
        server: EmbeddedValkey = request.getfixturevalue("valkey")
        return server.url
    cluster: ValkeyCluster = request.getfixturevalue("valkey_cluster")
    return cluster.url


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[AudioCacheService]:
    client = open_redis(redis_url)
    yield AudioCacheService(client, prefix=f"s{uuid.uuid4().hex[:10]}")
    await client.aclose()


async def _fill(store: AudioCacheService, count: int, **labels: str) -> list[CacheKey]:
    keys = [_key(f"{uuid.uuid4()}") for _ in range(count)]
    for i, key in enumerate(keys):
        voice = labels.get("voice") or ("alloy" if i % 2 else "nova")
        await store.put(
            key,
            b"RIFF" + bytes([i % 256]) * (1000 + i),
            media_type="audio/wav",
            ttl_seconds=60,
            labels=EntryLabels(voice=voice, model="tts-1", tenant=labels.get("tenant", "")),
        )
    return keys


# -- the cluster URL -----------------------------------------------------------------------


# -- the store suite, on both backends -----------------------------------------------------


async def test_put_fetch_roundtrip(store: AudioCacheService) -> None:
    keys = await _fill(store, 40)
    for i, key in enumerate(keys):
        found = await store.fetch(key)
        assert found is not None
        assert found.audio == b"RIFF" + bytes([i % 256]) * (1000 + i)
    assert await store.fetch(_key("absent")) is None


async def test_ttl_expires_and_sweep_reconciles(store: AudioCacheService) -> None:
    key = _key(str(uuid.uuid4()))
    await store.put(key, b"RIFF" + b"x" * 500, media_type="audio/wav", ttl_seconds=1,
                    labels=EntryLabels())  # fmt: skip
    assert 0 < await store.ttl_ms(key) <= 1000
    await asyncio.sleep(1.2)  # the 1 s TTL runs out
    assert await store.fetch(key) is None
    assert await store.sweep() == 1
    totals = await store.totals()
    assert (totals["entries"], totals["bytes"], totals["expired"]) == (0, 0, 1)


async def test_purge_by_selector_reaches_every_shard(store: AudioCacheService) -> None:
    keys = await _fill(store, 60)
    alloy = [k for i, k in enumerate(keys) if i % 2]
    removed, freed = await store.purge(voice="alloy")
    assert removed == len(alloy) and freed > 0
    assert all([await store.fetch(k) is None for k in alloy])
    assert all([await store.fetch(k) is not None for k in keys if k not in alloy])
    assert (await store.totals())["entries"] == len(keys) - len(alloy)
    assert await store.purge(voice="alloy") == (0, 0)


async def test_clear_hits_and_repair(store: AudioCacheService) -> None:
    keys = await _fill(store, 30)
    for key in keys[:10]:
        assert await store.get(key) is not None
    await store.get(_key("missing"))
    assert await store.flush_counters() == 10
    totals = await store.totals()
    assert (totals["hits"], totals["misses"]) == (10, 1)
    by_shard: dict[int, list[str]] = defaultdict(list)
    for key in keys[:10]:
        by_shard[int(key.hex[:4], 16) % SHARDS].append(key.hex)
    for shard, hexes in by_shard.items():
        assert [n for n, _ in await store.hit_counts(shard, hexes)] == [1] * len(hexes)
    report = await store.repair()
    assert report["ghost_records_removed"] == 0 and report["entries"] == 30
    removed, _ = await store.purge()
    assert removed == 30
    assert (await store.totals())["entries"] == 0


# -- cluster only: where the keys really are -----------------------------------------------


def _tag(name: bytes) -> bytes:
    return name[name.index(b"{") + 1 : name.index(b"}")]


async def test_each_shard_lives_on_one_master_and_totals_sum_masters(
    valkey_cluster: ValkeyCluster,
) -> None:
    client = open_redis(valkey_cluster.url)
    store = AudioCacheService(client, prefix=f"c{uuid.uuid4().hex[:10]}")
    keys = await _fill(store, 120, tenant="acme")
    for key in keys[:7]:
        await store.get(key)
    await store.flush_counters()
    totals = await store.totals()
    await client.aclose()

    pattern = f"{store.keyspace.prefix}:*"
    owner: dict[bytes, int] = {}
    summed: dict[str, int] = defaultdict(int)
    entries_seen = 0
    for i, master in enumerate(valkey_cluster.masters()):
        names = list(master.scan_iter(match=pattern, count=1000))
        assert names, "every master holds some shards"
        for name in names:
            tag = _tag(name)
            assert owner.setdefault(tag, i) == i, f"shard {tag!r} split across masters"
            if b":e:" in name:
                entries_seen += 1
            if name.endswith(b":stats"):
                for field, value in master.hgetall(name).items():
                    summed[field.decode() if isinstance(field, bytes) else field] += int(value)
        master.close()
    assert len(owner) == len({int(k.hex[:4], 16) % SHARDS for k in keys})
    assert entries_seen == 120
    assert dict(summed) == totals.counters
    assert totals["entries"] == 120 and totals["tenant:acme:entries"] == 120
    assert totals["hits"] == 7


def test_keyspace_shares_one_slot_per_shard(valkey_cluster: ValkeyCluster) -> None:
    space = Keyspace("ttsc")
    master = valkey_cluster.masters()[0]
    for n in (0, 17, 63):
        names = [*space.shard_keys(n), space.selector(n, "voice", "alloy"), space.shard(n) + "e:x"]
        slots = {master.cluster("KEYSLOT", name) for name in names}
        assert len(slots) == 1
    master.close()


# -- the proxy on the cluster --------------------------------------------------------------


async def test_proxy_miss_then_hit_and_ttl(
    make_proxy: ProxyFactory, upstream: tuple[Any, str]
) -> None:
    fake, url = upstream
    proxy = await make_proxy(url, audio_cache_ttl_seconds=1)
    first = await proxy.post(SPEECH_PATH, json=speech_body("Welcome to the hotel"))
    assert first.status == 200 and first.headers["X-Cache"] == "MISS"
    audio = await first.read()
    second = await proxy.post(SPEECH_PATH, json=speech_body("Welcome to the hotel"))
    assert second.headers["X-Cache"] == "HIT" and await second.read() == audio
    assert fake.calls["openai"] == 1
    await asyncio.sleep(1.2)  # the 1 s TTL runs out
    third = await proxy.post(SPEECH_PATH, json=speech_body("Welcome to the hotel"))
    assert third.headers["X-Cache"] == "MISS" and await third.read() == audio
    assert fake.calls["openai"] == 2


async def test_two_proxies_share_the_cache_and_coalesce(
    make_proxy: ProxyFactory, upstream: tuple[Any, str]
) -> None:
    fake, url = upstream
    prefix = f"p{uuid.uuid4().hex[:10]}"
    a = await make_proxy(url, prefix=prefix)
    b = await make_proxy(url, prefix=prefix)
    miss = await a.post(SPEECH_PATH, json=speech_body("Check-in is at three"))
    # Read-your-writes: a client that has the whole answer gets a hit on any replica.
    audio = await miss.read()
    hit = await b.post(SPEECH_PATH, json=speech_body("Check-in is at three"))
    assert (miss.headers["X-Cache"], hit.headers["X-Cache"]) == ("MISS", "HIT")
    assert await hit.read() == audio
    assert fake.calls["openai"] == 1

    # Twenty identical concurrent misses, half on each replica.
    body = speech_body("Breakfast is served from seven")
    answers = await asyncio.gather(*(p.post(SPEECH_PATH, json=body) for p in [a, b] * 10))
    audios = {await r.read() for r in answers}
    assert len(audios) == 1 and all(r.status == 200 for r in answers)
    settings = a.app[SETTINGS]
    cross_replica = bool(getattr(settings, "coalescing_enabled", False))
    # In-process single flight makes it at most one call per replica; with cross-replica
    # coalescing (proxy/coalescing.py) it is exactly one.
    calls = fake.calls["openai"] - 1
    assert calls == 1 if cross_replica else 1 <= calls <= 2, calls
    for proxy in (a, b):
        await service_of(proxy).flush_counters()
    totals = await service_of(a).totals()
    assert totals["entries"] == 2


async def test_delete_on_one_replica_is_seen_by_the_other(
    make_proxy: ProxyFactory, upstream: tuple[Any, str]
) -> None:
    fake, url = upstream
    prefix = f"p{uuid.uuid4().hex[:10]}"
    a = await make_proxy(url, prefix=prefix)
    b = await make_proxy(url, prefix=prefix)
    await (await a.post(SPEECH_PATH, json=speech_body("Room service", "nova"))).read()
    await (await a.post(SPEECH_PATH, json=speech_body("Room service", "alloy"))).read()
    removed, _ = await service_of(b).purge(voice="nova")
    assert removed == 1
    again = await a.post(SPEECH_PATH, json=speech_body("Room service", "nova"))
    kept = await a.post(SPEECH_PATH, json=speech_body("Room service", "alloy"))
    assert (again.headers["X-Cache"], kept.headers["X-Cache"]) == ("MISS", "HIT")
    assert fake.calls["openai"] == 3


async def test_hot_tiers_hear_deletes_and_purges_from_every_master(
    make_proxy: ProxyFactory, upstream: tuple[Any, str]
) -> None:
    """Invalidations are published from whichever master ran the script; one subscription
    per replica, to any node, hears them all."""
    _, url = upstream
    a, b = await replicas(make_proxy, url)
    keys = [await make_hot(b, f"Spa hours {i}") for i in range(6)]  # spread over shards
    purged = [await make_hot(b, f"Late checkout {i}", voice="nova") for i in range(6)]
    for key in keys:
        assert await service_of(a).delete(CacheKey(key))
    removed, _ = await service_of(a).purge(voice="nova")
    assert removed == len(purged)
    await eventually(lambda: not any(k in hot_of(b) for k in keys + purged), 1.0)


async def test_cleanup_frees_space_on_every_master(
    valkey_cluster: ValkeyCluster,
) -> None:
    from proxy.background.cleanup import Cleaner

    client = open_redis(valkey_cluster.url)
    store = AudioCacheService(client, prefix=f"c{uuid.uuid4().hex[:10]}")
    await _fill(store, 90)
    size = (await store.totals())["bytes"]
    pattern = f"{store.keyspace.prefix}:*:e:*"

    def entries_per_master() -> list[int]:
        counts = []
        for master in valkey_cluster.masters():
            counts.append(sum(1 for _ in master.scan_iter(match=pattern, count=1000)))
            master.close()
        return counts

    before = entries_per_master()
    report = await Cleaner(store, max_bytes=size, target_percent=50).clean(trigger="test")
    after = entries_per_master()
    totals = await store.totals()
    await client.aclose()
    assert report.result == "ok" and report.size_after_bytes <= size // 2
    assert sum(after) == totals["entries"] == 90 - report.entries_removed
    assert totals["bytes"] == report.size_after_bytes
    assert all(a < b for a, b in zip(after, before, strict=True)), (before, after)


async def test_commands_whose_connection_is_closed_under_them_fail_as_store_errors(
    valkey_cluster: ValkeyCluster,
) -> None:
    """On CLUSTERDOWN, as when a master has just died, redis-py closes every connection of
    the client, also those other tasks are writing to: each of their commands must fail
    as a RedisError (which the breaker and the fail-open paths handle), not anything else."""
    client = open_redis(valkey_cluster.url)
    prefix = f"r{uuid.uuid4().hex[:8]}"
    outcomes: dict[str, int] = defaultdict(int)
    deadline = asyncio.get_running_loop().time() + 2.0

    async def commands(n: int) -> None:
        while asyncio.get_running_loop().time() < deadline:
            try:
                if n % 2:
                    await client.get(f"{prefix}:{n}")
                else:
                    pipe = client.pipeline(transaction=False)
                    pipe.get(f"{prefix}:a{n}")
                    pipe.get(f"{prefix}:b{n}")
                    await pipe.execute()
                outcomes["ok"] += 1
            except RedisError:
                outcomes["store error"] += 1
            except Exception as exc:  # what the fail-open paths would not catch
                outcomes[type(exc).__name__] += 1

    async def resets() -> None:
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.003)
            await client.aclose()  # what redis-py does on CLUSTERDOWN

    try:
        await asyncio.gather(*(commands(n) for n in range(64)), resets())
    finally:
        await client.aclose()
    assert outcomes["ok"] > 0
    assert set(outcomes) <= {"ok", "store error"}, dict(outcomes)
