"""A store failover under load: what clients see and what the counters say after.

Two modes, each on real servers from the pip-installed binary:

- ``--mode sentinel`` (the default): a master, one replica and three sentinels; the proxy
  on ``redis+sentinel://``; after a second of load, ``SENTINEL FAILOVER``.
- ``--mode cluster``: a Redis Cluster of 3 masters with a replica each (node timeout
  1 s); the proxy on ``redis+cluster://``; after a second of load, SIGKILL of the master
  that serves the slots of some stored sentences (the hot ones), and the cluster promotes
  its replica.

A loopback upstream answers; ``--clients`` clients ask a mix of stored sentences (hits;
no hot tier, so a hit is an answer from the store) and new ones (misses, then stored) for
``--seconds``. The bench prints the requests sent, the failed ones (any answer but the
right audio), the seconds from the failover until the replica is promoted and until a hot
sentence is a hit again, the drift (counters minus the entries Redis really holds) before
and after ``repair()``, and how many of the writes Redis acknowledged (a store that
returned stored) lost their entry in the failover.

Run: ``python -m bench.failover [--mode cluster]`` (about 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from typing import Any, Protocol

import aiohttp
import redis
from aiohttp import web

from proxy.app import SERVICE as STORE
from proxy.app import create_app
from proxy.config.settings import load_settings
from proxy.core.keys import CacheKey
from proxy.store.embedded import free_port
from tests.support.cluster import ValkeyCluster, start_cluster
from tests.support.sentinel import SERVICE, SentinelSet, start_sentinels

SPEECH = "/v1/audio/speech"


def audio_of(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest() * 512  # 16 KB per sentence


async def upstream_speech(request: web.Request) -> web.Response:
    body = await request.json()
    return web.Response(body=audio_of(body["input"]), content_type="audio/pcm")


def payload(text: str) -> dict[str, str]:
    return {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def live_entries(service: Any) -> int:
    pattern = f"{service.keyspace.prefix}:*:e:*"
    return sum([1 async for _ in service.redis.scan_iter(match=pattern, count=1000)])


async def drift(service: Any) -> int:
    return (await service.totals())["entries"] - await live_entries(service)


class Failover(Protocol):
    """One kind of store with replicas, and how it fails over."""

    name: str
    url: str

    def hot(self, entries: dict[str, str]) -> list[str]:
        """Of the stored sentences (sentence -> entry key), those the failover moves."""

    def trigger(self) -> str:
        """Fail the master over; says what happened."""

    def promoted(self) -> bool:
        """True once the replica serves as the master."""

    def stop(self) -> None: ...


class SentinelFailover:
    name = "Sentinel"

    def __init__(self) -> None:
        self.group: SentinelSet = start_sentinels()
        self.url = self.group.url
        self.old_master = self.group.master_port()

    def hot(self, entries: dict[str, str]) -> list[str]:
        return list(entries)

    def trigger(self) -> str:
        self.group.sentinel().execute_command("SENTINEL", "FAILOVER", SERVICE)
        return f"SENTINEL FAILOVER, master {self.old_master}"

    def promoted(self) -> bool:
        return self.group.master_port() != self.old_master

    def stop(self) -> None:
        self.group.stop()


class ClusterFailover:
    name = "Redis Cluster"

    def __init__(self) -> None:
        self.cluster: ValkeyCluster = start_cluster(replicas=1, node_timeout_ms=1000)
        self.url = self.cluster.url
        self.victim = self.replica = 0

    def hot(self, entries: dict[str, str]) -> list[str]:
        owners = {text: self.cluster.owner_of(key) for text, key in entries.items()}
        self.victim = owners[next(iter(entries))]
        self.replica = self.cluster.replica_of(self.victim)
        return [text for text, owner in owners.items() if owner == self.victim]

    def trigger(self) -> str:
        self.cluster.wait_replicas_synced()
        self.cluster.kill(self.victim)
        return f"SIGKILL of master {self.victim}, replica {self.replica}"

    def promoted(self) -> bool:
        try:
            return self.replica in self.cluster.master_ports()
        except (redis.RedisError, RuntimeError):
            return False

    def stop(self) -> None:
        self.cluster.stop()


async def entry_keys(service: Any) -> set[str]:
    pattern = f"{service.keyspace.prefix}:*:e:*"
    return {k.decode() async for k in service.redis.scan_iter(match=pattern, count=1000)}


async def main(mode: str, clients: int, seconds: float) -> list[str]:
    failover: Failover = ClusterFailover() if mode == "cluster" else SentinelFailover()
    runners: list[web.AppRunner] = []
    try:
        up = web.Application()
        up.router.add_post(SPEECH, upstream_speech)
        runner, up_url = await serve(up)
        runners.append(runner)
        settings = load_settings(
            env={},
            overrides={
                "upstream_url": up_url,
                "client_auth": "none",
                "audio_cache_key_prefix": f"f{uuid.uuid4().hex[:8]}",
                "audio_cache_stats_flush_seconds": 0.1,
                "audio_cache_sweep_interval_seconds": 0.2,
                "redis_socket_timeout_seconds": 0.3,
                "redis_connect_timeout_seconds": 0.3,
                "redis_breaker_reset_seconds": 0.5,
                "audio_cache_hot_tier_mb": 0,  # a hit is an answer from the store
            },
        )
        proxy = create_app(settings, redis_url=failover.url)
        runner, url = await serve(proxy)
        runners.append(runner)
        service = proxy[STORE]
        sent = failures = 0
        errors: dict[str, int] = {}
        # Entries Redis acknowledged (put returned stored): the proxy's own tally.
        acknowledged: set[CacheKey] = set()
        put = service.put

        async def counted_put(key: CacheKey, *args: Any, **kwargs: Any) -> Any:
            result = await put(key, *args, **kwargs)
            if result.stored:
                acknowledged.add(key)
            return result

        service.put = counted_put
        async with aiohttp.ClientSession() as session:

            async def ask(text: str) -> str:
                nonlocal sent, failures
                sent += 1
                try:
                    async with session.post(url + SPEECH, json=payload(text)) as r:
                        body = await r.read()
                        if r.status != 200 or body != audio_of(text):
                            failures += 1
                            errors[str(r.status)] = errors.get(str(r.status), 0) + 1
                        return r.headers.get("X-Cache", "")
                except aiohttp.ClientError as exc:
                    failures += 1
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    return ""

            entries: dict[str, str] = {}
            known = await entry_keys(service)
            for text in (f"Welcome number {i}" for i in range(24)):
                await ask(text)
                now = await entry_keys(service)
                new = now - known
                if len(new) == 1:
                    entries[text] = new.pop()
                known = now
            stored = list(entries)
            hot = failover.hot(entries)
            failover_at: float | None = None
            promoted_at: float | None = None
            resumed_at: float | None = None
            deadline = time.monotonic() + seconds

            async def client(n: int) -> None:
                nonlocal resumed_at
                i = 0
                while time.monotonic() < deadline:
                    i += 1
                    if i % 4 == 0:
                        text = f"new {n} {i}"
                    elif i % 2:
                        text = hot[(n + i) % len(hot)]
                    else:
                        text = stored[(n + i) % len(stored)]
                    cache = await ask(text)
                    resuming = promoted_at is not None and resumed_at is None
                    if resuming and text in hot and cache == "HIT":
                        resumed_at = time.monotonic()
                    await asyncio.sleep(0.01)

            async def watch() -> None:
                nonlocal promoted_at
                while time.monotonic() < deadline and promoted_at is None:
                    if await asyncio.to_thread(failover.promoted):
                        promoted_at = time.monotonic()
                    await asyncio.sleep(0.05)

            load = [asyncio.create_task(client(n)) for n in range(clients)]
            await asyncio.sleep(1.0)
            failover_at = time.monotonic()
            what = await asyncio.to_thread(failover.trigger)
            watcher = asyncio.create_task(watch())
            await asyncio.gather(*load)
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await asyncio.sleep(0.5)  # counters flushed, last fills stored
            before = await drift(service)
            report = await service.repair()
            after = await drift(service)
            # An acknowledged write is lost if its entry is gone.
            lost = [key for key in acknowledged if await service.fetch(key) is None]

        def since(moment: float | None) -> str:
            return f"{moment - failover_at:.2f} s" if moment and failover_at else "never"

        return [
            f"{failover.name} failover under load ({clients} clients, {seconds:.0f} s)",
            f"failover            {what}",
            f"hot sentences       {len(hot)} of {len(stored)} stored",
            f"requests            {sent}",
            f"failed requests     {failures} {errors or ''}".rstrip(),
            f"replica promoted    {since(promoted_at)}",
            f"hits resume after   {since(resumed_at)}",
            f"drift before repair {before} entries",
            f"repair corrected    {report['corrected'] or '{}'}, "
            f"ghosts removed {report['ghost_records_removed']}",
            f"drift after repair  {after} entries",
            f"stored writes lost  {len(lost)} of {len(acknowledged)} acknowledged",
        ]
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        failover.stop()


def cli() -> None:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mode", choices=("sentinel", "cluster"), default="sentinel")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    lines = asyncio.run(main(args.mode, min(args.clients, 64), min(args.seconds, 120.0)))
    for line in lines:
        print(line)


if __name__ == "__main__":
    cli()
