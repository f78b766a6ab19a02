"""Size-bounded cleanup and exact accounting, against a real Valkey and a real proxy."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from proxy.background.cleanup import Cleaner, CleanupLock, CleanupRunner
from proxy.background.maintenance import Maintenance
from proxy.config.settings import SEED_CONTENT_TYPE_FACTORS
from proxy.core.compression import CompressionAdvisor
from proxy.core.eviction import ScoreWeights
from proxy.core.keys import CacheKey
from proxy.store.client import open_redis
from proxy.store.service import AudioCacheService, EntryLabels
from tests.support.proxies import service_of
from tests.support.speech import speech_body
from tests.support.waits import eventually

AUDIO = 4000
SEED = ScoreWeights(content_type_factors=SEED_CONTENT_TYPE_FACTORS, age_basis="created")

MakeService = Callable[..., Awaitable[AudioCacheService]]


def key(name: str) -> CacheKey:
    return CacheKey(hashlib.sha256(name.encode()).hexdigest())


@pytest.fixture
async def make_service(redis_url: str) -> AsyncIterator[MakeService]:
    """Services on the shared Valkey; each call may share a prefix to act as a replica."""
    clients: list[Any] = []

    async def make(prefix: str | None = None) -> AudioCacheService:
        redis = open_redis(redis_url)
        clients.append(redis)
        return AudioCacheService(
            redis,
            prefix=prefix or f"c{uuid.uuid4().hex[:10]}",
            advisor=CompressionAdvisor(False, 0, 0.05),  # sizes stay exactly as given
        )

    yield make
    for redis in clients:
        await redis.aclose()


async def put(
    service: AudioCacheService,
    name: str,
    *,
    cls: str = "default",
    ttl: int = 3600,
    size: int = AUDIO,
) -> int:
    result = await service.put(
        key(name),
        os.urandom(size),
        media_type="audio/wav",
        ttl_seconds=ttl,
        labels=EntryLabels(content_class=cls),
    )
    return result.stored_size


async def test_background_cleanup_reaches_target_and_removes_lowest_scored(
    make_service: MakeService,
) -> None:
    service = await make_service()
    entry_bytes = await put(service, "probe")
    await service.remove([key("probe")])
    cleaner = Cleaner(service, max_bytes=100 * entry_bytes, weights=SEED)
    runner = CleanupRunner(cleaner, check_seconds=0.05)
    runner.start()
    try:
        # Oldest first: protected welcome messages, then defaults; some defaults get hits.
        names: list[str] = []
        for i in range(10):
            await put(service, f"welcome{i}", cls="welcome_message")
        for i in range(84):
            await put(service, f"default{i}")
            names.append(f"default{i}")
            await asyncio.sleep(0.002)  # spread creation times
        hot = names[:10]
        for name in hot:
            for _ in range(5):
                assert await service.get(key(name)) is not None
        await service.flush_counters()
        await asyncio.sleep(0.2)  # four of the runner's checks: time to (wrongly) clean
        assert runner.reports == []  # 94% is below the threshold
        await put(service, "default84")
        await put(service, "default85")  # 96%: past the threshold
        names += ["default84", "default85"]
        await eventually(lambda: _has_report(runner))
    finally:
        await runner.stop()

    report = runner.reports[-1]
    totals = await service.totals()
    assert report.result == "ok" and report.trigger == "auto"
    assert report.size_before_bytes == 96 * entry_bytes
    assert totals["bytes"] == report.size_after_bytes <= 80 * entry_bytes
    assert totals["bytes"] > 79 * entry_bytes  # no more than needed
    assert report.entries_removed == 16 == totals["evicted"]
    assert report.bytes_freed == 16 * entry_bytes
    present = {
        n for n in [*names, *(f"welcome{i}" for i in range(10))] if await _exists(service, n)
    }
    removed = set(names) - present
    cold = [n for n in names if n not in hot]
    assert removed == set(cold[:16]), "the oldest never-hit defaults go first"
    assert all(f"welcome{i}" in present for i in range(10))


async def _has_report(runner: CleanupRunner) -> bool:
    return bool(runner.reports)


async def _exists(service: AudioCacheService, name: str) -> bool:
    return await service.info(key(name)) is not None


async def test_ttl_expiry_keeps_counters_exact(make_service: MakeService) -> None:
    service = await make_service()
    kept = 0
    for i in range(5):
        await put(service, f"short{i}", ttl=1, size=1000 + i)
    for i in range(3):
        kept += await put(service, f"long{i}", ttl=3600, size=2000 + i)
    assert (await service.totals())["entries"] == 8
    maintenance = Maintenance(service, flush_seconds=0.05, sweep_seconds=0.05)
    maintenance.start()
    try:

        async def settled() -> bool:
            return (await service.totals())["entries"] == 3

        await eventually(settled, seconds=5)
    finally:
        await maintenance.stop()
    totals = await service.totals()
    assert (totals["entries"], totals["bytes"], totals["expired"]) == (3, kept, 5)
    assert totals["class:default:bytes"] == kept
    # The truth agrees: nothing for repair to correct.
    report = await service.repair()
    assert report["corrected"] == {} and report["ghost_records_removed"] == 0


async def test_overwrite_and_delete_keep_counters_exact(make_service: MakeService) -> None:
    service = await make_service()
    await put(service, "a", size=1000)
    size = await put(service, "a", size=3000)  # overwritten
    await put(service, "b", size=500)
    assert await service.delete(key("b"))
    totals = await service.totals()
    assert (totals["entries"], totals["bytes"], totals["overwritten"]) == (1, size, 1)


async def test_two_replicas_race_and_one_cleans(make_service: MakeService) -> None:
    prefix = f"r{uuid.uuid4().hex[:10]}"
    a, b = await make_service(prefix), await make_service(prefix)
    sizes = [await put(a, f"e{i}") for i in range(300)]
    max_bytes = sum(sizes)
    cleaners = [Cleaner(s, max_bytes=max_bytes, weights=SEED, batch=10) for s in (a, b)]
    reports = await asyncio.gather(*(c.clean(trigger="auto") for c in cleaners))
    cleaned = [r for r in reports if r.entries_removed]
    assert len(cleaned) == 1
    other = next(r for r in reports if r is not cleaned[0])
    assert other.result in ("locked", "not_needed") and other.entries_removed == 0
    totals = await a.totals()
    assert totals["evicted"] == cleaned[0].entries_removed
    assert max_bytes * 0.8 - AUDIO * 1.01 < totals["bytes"] <= max_bytes * 0.8


async def test_lock_expires_and_only_its_owner_releases_it(make_service: MakeService) -> None:
    service = await make_service()
    name = f"{service.keyspace.prefix}:cleanup:lock"
    first = CleanupLock(service.redis, name, ttl_ms=200)
    second = CleanupLock(service.redis, name, ttl_ms=200)
    assert await first.acquire()
    assert not await second.acquire()
    await second.release()  # not the owner: no effect
    assert not await second.acquire()
    await asyncio.sleep(0.3)  # the first owner "crashed": its lock expires
    assert await second.acquire()
    assert not await first.extend()
    await first.release()
    assert await service.redis.get(name) == second.token.encode()
    await second.release()
    assert await service.redis.get(name) is None


async def test_held_lock_means_locked_report(make_service: MakeService) -> None:
    service = await make_service()
    for i in range(10):
        await put(service, f"e{i}")
    cleaner = Cleaner(service, max_bytes=AUDIO * 5)
    other = CleanupLock(service.redis, cleaner.lock.name, ttl_ms=5000)
    assert await other.acquire()
    report = await cleaner.clean()
    assert (report.result, report.entries_removed) == ("locked", 0)
    await other.release()
    assert (await cleaner.clean()).result == "ok"


async def test_tenant_target_only_touches_that_tenant(make_service: MakeService) -> None:
    service = await make_service()
    for i in range(10):
        for tenant in ("acme", "globex"):
            await service.put(
                key(f"{tenant}{i}"),
                os.urandom(AUDIO),
                media_type="audio/wav",
                ttl_seconds=60,
                labels=EntryLabels(tenant=tenant),
            )
    cleaner = Cleaner(service, max_bytes=10**9)
    report = await cleaner.clean(target_bytes=AUDIO * 5, tenant="acme", trigger="quota")
    totals = await service.totals()
    assert report.result == "ok" and report.tenant == "acme"
    assert totals["tenant:acme:bytes"] <= AUDIO * 5
    assert totals["tenant:globex:entries"] == 10


async def test_repair_finds_and_fixes_injected_drift(make_service: MakeService) -> None:
    service = await make_service()
    sizes = {f"e{i}": await put(service, f"e{i}", size=1000 + i) for i in range(20)}
    truth = await service.totals()
    victim = key("e3")
    n = int(victim.hex[:4], 16) % 64
    stats = service.keyspace.shard_keys(n)[0]
    await service.redis.hincrby(stats, "bytes", 12345)
    await service.redis.hincrby(stats, "entries", 2)
    await service.redis.delete(service.keyspace.entry(victim))  # behind the index's back
    report = await service.repair()
    assert report["ghost_records_removed"] == 1
    assert report["corrected"]["bytes"] == -12345 - sizes["e3"]
    assert report["corrected"]["entries"] == -3
    after = await service.totals()
    assert after["entries"] == truth["entries"] - 1
    assert after["bytes"] == truth["bytes"] - sizes["e3"]
    assert (await service.repair())["corrected"] == {}


# -- through the real proxy -----------------------------------------------------------


async def test_proxy_cleans_in_background_and_serves_every_put(
    upstream: Any, make_proxy: Any
) -> None:
    _, url = upstream
    # ~4 KB answers, 20 KB cache: each fill still reaches the client; cleanup catches up.
    client = await make_proxy(url, audio_cache_max_size_mb=20 / 1024)
    service = service_of(client)
    for i in range(12):
        response = await client.post("/v1/audio/speech", json=speech_body(f"frase {i}", voice="es"))
        assert response.status == 200
        assert len(await response.read()) > 4000

    async def under_target() -> bool:
        return (await service.totals())["bytes"] <= 0.8 * 20 * 1024

    await eventually(under_target)
    totals = await service.totals()
    assert totals["evicted"] > 0 and totals["entries"] >= 1


async def test_admin_cleanup_route(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    client = await make_proxy(url, audio_cache_max_size_mb=1)
    for i in range(6):
        assert (
            await client.post("/v1/audio/speech", json=speech_body(f"hola {i}", voice="es"))
        ).status == 200
    response = await client.post("/admin/audio-cache/cleanup")
    body = await response.json()
    assert response.status == 200
    assert body["result"] == "not_needed" and body["entries_removed"] == 0
    assert body["size_before_bytes"] == body["size_after_bytes"] > 24_000

    response = await client.post("/admin/audio-cache/cleanup?force=true&target_percent=1")
    body = await response.json()
    assert response.status == 200
    assert body["result"] == "ok"
    assert body["size_after_bytes"] <= 1024 * 1024 // 100 < body["size_before_bytes"]
    assert body["bytes_freed"] == body["size_before_bytes"] - body["size_after_bytes"]
    assert set(body) >= {"entries_removed", "duration_seconds", "size_before_mb", "size_after_mb"}

    for query, field in (("force=maybe", "force"), ("target_percent=100", "target_percent"),
                         ("target_percent=abc", "target_percent")):  # fmt: skip
        response = await client.post(f"/admin/audio-cache/cleanup?{query}")
        assert response.status == 400
        assert (await response.json())["error"]["field"] == field


async def test_admin_cleanup_route_checks_the_admin_token(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    client = await make_proxy(url, env={"ADMIN_TOKEN": "s3cret"})
    assert (await client.post("/admin/audio-cache/cleanup")).status == 401
    ok = await client.post("/admin/audio-cache/cleanup", headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200


async def test_counters_survive_a_proxy_restart(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    prefix = f"p{uuid.uuid4().hex[:10]}"
    first = await make_proxy(url, prefix=prefix)
    for i in range(4):
        assert (
            await first.post("/v1/audio/speech", json=speech_body(f"adios {i}", voice="es"))
        ).status == 200
    assert (
        await first.post("/v1/audio/speech", json=speech_body("adios 0", voice="es"))
    ).status == 200  # hit
    await first.close()  # graceful shutdown flushes the batched hit count
    second = await make_proxy(url, prefix=prefix)
    totals = await service_of(second).totals()
    assert (totals["entries"], totals["hits"]) == (4, 1)
    assert totals["bytes"] > 4 * 4000
    response = await second.post("/v1/audio/speech", json=speech_body("adios 1", voice="es"))
    assert response.headers["X-Cache"] == "HIT"
    assert fake.calls["openai"] == 4


async def test_hits_per_tenant_are_counted_and_survive_repair(make_service: MakeService) -> None:
    service = await make_service()
    k = key("t1")
    await service.put(
        k,
        os.urandom(AUDIO),
        media_type="audio/wav",
        ttl_seconds=60,
        labels=EntryLabels(tenant="acme"),
    )
    for _ in range(3):
        assert await service.get(k) is not None
    await service.flush_counters()
    assert (await service.totals())["tenant:acme:hits"] == 3
    await service.repair()
    totals = await service.totals()
    assert (totals["tenant:acme:hits"], totals["tenant:acme:entries"]) == (3, 1)


async def test_bookkeeping_reloads_its_scripts_after_a_script_flush(
    make_service: MakeService,
) -> None:
    """Sweep and hit counts go in one pipeline per run; a server that lost its scripts
    (restart, failover, SCRIPT FLUSH) gets them again before the pipeline runs."""
    service = await make_service()
    k = key("flushed")
    await service.put(
        k, os.urandom(AUDIO), media_type="audio/wav", ttl_seconds=60, labels=EntryLabels()
    )
    await put(service, "short", ttl=1)
    for _ in range(2):
        assert await service.get(k) is not None
    await service.redis.script_flush()
    assert await service.flush_counters() == 2
    await asyncio.sleep(1.1)  # the 1 s TTL of "short" runs out, so the sweep has work
    await service.redis.script_flush()
    assert await service.sweep() == 1
    totals = await service.totals()
    assert (totals["hits"], totals["expired"], totals["entries"]) == (2, 1, 1)
