"""Redis Cluster with replicas: the master that serves some stored entries is killed
(SIGKILL) under load, the cluster promotes its replica, and no client request fails; hits on
those entries resume by themselves and the counters still match what the store holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio
from redis.exceptions import ClusterDownError

from proxy.core.breaker import CircuitBreaker
from proxy.store.guard import CacheUnavailable, StoreGuard
from tests.support.cluster import ValkeyCluster, start_cluster
from tests.support.loopback_upstream import fake_wav
from tests.support.proxies import ProxyClient, proxy_on, service_of
from tests.support.speech import SPEECH_PATH, speech_body
from tests.support.waits import eventually, until_filled


@pytest.fixture
def replicated_cluster() -> Iterator[ValkeyCluster]:
    """3 masters with a replica each; a node silent for 1 s is failed over."""
    cluster = start_cluster(replicas=1, node_timeout_ms=1000)
    yield cluster
    cluster.stop()


async def speak(client: ProxyClient, text: str) -> tuple[int, bytes, str]:
    r = await client.post(SPEECH_PATH, json=speech_body(text, voice="es"))
    return r.status, await r.read(), r.headers.get("X-Cache", "")


def expected(text: str) -> bytes:
    return fake_wav(text, "es", "tts-1|wav|None")


async def entry_keys(client: ProxyClient) -> set[str]:
    service = service_of(client)
    pattern = f"{service.keyspace.prefix}:*:e:*"
    return {k.decode() async for k in service.redis.scan_iter(match=pattern, count=1000)}


async def drift(client: ProxyClient) -> int:
    """Entries the counters say minus entries the store holds."""
    return (await service_of(client).totals())["entries"] - len(await entry_keys(client))


async def test_a_killed_master_fails_no_request_and_hits_resume_on_its_replica(
    upstream: Any, replicated_cluster: ValkeyCluster, aiohttp_client: Any
) -> None:
    cluster = replicated_cluster
    _fake, url = upstream
    # No hot tier: a hit is an answer from the store.
    client = await proxy_on(
        aiohttp_client, url, cluster.url, client_auth="none", audio_cache_hot_tier_mb=0
    )
    # Which master each stored sentence's entry lives on.
    entries: dict[str, str] = {}
    known = await entry_keys(client)
    for i in range(12):
        text = f"cluster phrase {i}"
        assert (await speak(client, text))[:2] == (200, expected(text))
        await until_filled(client)
        now = await entry_keys(client)
        (entries[text],) = now - known
        known = now
    owners = {text: cluster.owner_of(key) for text, key in entries.items()}
    victim = owners["cluster phrase 0"]
    replica = cluster.replica_of(victim)
    hot = [t for t, owner in owners.items() if owner == victim]
    for t in entries:
        assert (await speak(client, t))[2] == "HIT"
    cluster.wait_replicas_synced()

    failures: list[Any] = []
    stop = asyncio.Event()

    async def load(n: int) -> int:
        sent = 0
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            sent += 1
            # Hits on the victim's entries and on the others, and new sentences (misses).
            t = f"new {n} {sent}" if sent % 4 == 0 else list(entries)[(n + sent) % len(entries)]
            status, body, _ = await speak(client, t)
            if (status, body) != (200, expected(t)):
                failures.append((t, status, body[:80]))
            await asyncio.sleep(0.005)
        return sent

    loaders = [asyncio.create_task(load(n)) for n in range(4)]
    await asyncio.sleep(0.3)
    cluster.kill(victim)
    await asyncio.to_thread(cluster.wait_promoted, replica, 30.0)

    async def hot_hits_again() -> bool:
        status, body, cache = await speak(client, hot[0])
        return status == 200 and body == expected(hot[0]) and cache == "HIT"

    await eventually(hot_hits_again, seconds=30, interval=0.1, what="no hit after the failover")
    stop.set()
    sent = sum(await asyncio.gather(*loaders))
    assert sent > 0 and failures == []
    assert cluster.owner_of(entries[hot[0]]) == replica
    # Every sentence stored before the kill was replicated: each is a hit again.
    for t in entries:
        assert (await speak(client, t))[2] == "HIT", t
    # New answers are stored on the promoted replica too.
    text = "after the failover"
    assert (await speak(client, text))[:2] == (200, expected(text))
    await until_filled(client)
    assert (await speak(client, text))[2] == "HIT"
    # The counters travel with the entries (one slot per shard): nothing to correct.
    assert await drift(client) == 0
    report = await service_of(client).repair()
    assert report["ghost_records_removed"] == 0 and report["corrected"] == {}
    assert report["entries"] == len(await entry_keys(client))
    assert await drift(client) == 0


async def test_a_cluster_that_answers_clusterdown_opens_the_breaker() -> None:
    """A master died and no replica can take its slots: every node answers CLUSTERDOWN.
    The store is down for the proxy, so the breaker opens and requests stop paying for it
    (redis-py's cluster client retries CLUSTERDOWN, 0.25 s apart, before it gives up)."""
    cluster = start_cluster(node_timeout_ms=500)
    try:
        cluster.kill(cluster.master_ports()[0])
        deadline = time.monotonic() + 30
        while cluster.state_ok(cluster.live_ports()):
            assert time.monotonic() < deadline, "the cluster never noticed the dead master"
            await asyncio.sleep(0.05)
        # A plain connection to a live master, for a key it serves: the answer itself.
        port = cluster.master_ports()[0]
        key = next(f"k{i}" for i in range(100) if cluster.owner_of(f"k{i}") == port)
        node = redis.asyncio.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        guard = StoreGuard(CircuitBreaker(failure_threshold=2, reset_seconds=60))
        try:
            for _ in range(2):
                with pytest.raises(ClusterDownError):
                    await guard(node.get(key))
            assert guard.breaker.is_open
            with pytest.raises(CacheUnavailable):
                await guard(node.get(key))
        finally:
            await node.aclose()
    finally:
        cluster.stop()
