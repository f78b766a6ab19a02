"""What the admin API costs as the cache grows: stats, lookups and a selector purge.

Fills a private Valkey with cached answers through the real ``AudioCacheService.put`` (a
few tenants, voices and content types), then times ``GET /admin/audio-cache/stats`` and
``GET /admin/audio-cache/entry`` through a real proxy at each size, as ratios to the
empty cache, and finally ``DELETE /admin/audio-cache/entries?voice=`` for one voice of
four. Stats read counters, never the entries, so their cost should not grow with them.

Run: ``python -m bench.admin_stats`` (about half a minute on two cores).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import time
import uuid

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.app import SERVICE, create_app
from proxy.config.settings import load_settings
from proxy.core.keys import CacheKey
from proxy.store.embedded import EmbeddedValkey, free_port
from proxy.store.service import AudioCacheService, EntryLabels

VOICES = ("alloy", "echo", "nova", "shimmer")
TENANTS = ("acme", "globex", "initech")
CLASSES = ("welcome_message", "common_responses", "room_options", "default")
TOKEN = "bench-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def key(i: int) -> CacheKey:
    return CacheKey(hashlib.sha256(str(i).encode()).hexdigest())


async def fill(service: AudioCacheService, start: int, stop: int, size: int) -> None:
    audio = os.urandom(size)
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with sem:
            labels = EntryLabels(
                content_class=CLASSES[i % 4],
                route="openai",
                voice=VOICES[i % 4],
                model="tts-1",
                tenant=TENANTS[i % 3],
            )
            await service.put(
                key(i), audio, media_type="audio/wav", ttl_seconds=3600, labels=labels
            )

    await asyncio.gather(*(one(i) for i in range(start, stop)))


async def timed(client: TestClient[web.Request, web.Application], path: str, n: int) -> float:
    """Median milliseconds of ``n`` sequential GETs."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = await client.get(path, headers=AUTH)
        await response.read()
        assert response.status == 200, await response.text()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


async def main(sizes: list[int], entry_bytes: int, samples: int) -> None:
    with EmbeddedValkey(port=free_port()) as store:
        settings = load_settings(
            env={"ADMIN_TOKEN": TOKEN},
            overrides={
                "upstream_url": "http://127.0.0.1:9",
                "audio_cache_key_prefix": f"b{uuid.uuid4().hex[:8]}",
                "audio_cache_max_size_mb": 100_000,
            },
        )
        client = TestClient(TestServer(create_app(settings, redis_url=store.url), host="127.0.0.1"))
        await client.start_server()
        try:
            service = client.app[SERVICE]
            rows = []
            filled = 0
            for size in sizes:
                await fill(service, filled, size, entry_bytes)
                filled = size
                stats_ms = await timed(client, "/admin/audio-cache/stats", samples)
                entry_ms = await timed(
                    client, f"/admin/audio-cache/entry?key={key(0).hex}", samples
                )
                rows.append((size, stats_ms, entry_ms))
            base_stats, base_entry = rows[0][1], rows[0][2]
            print(f"\n{'entries':>9} {'stats ms':>10} {'ratio':>7} {'entry ms':>10} {'ratio':>7}")
            for size, stats_ms, entry_ms in rows:
                print(
                    f"{size:>9} {stats_ms:>10.2f} {stats_ms / base_stats:>6.2f}x "
                    f"{entry_ms:>10.2f} {entry_ms / base_entry:>6.2f}x"
                )
            t0 = time.perf_counter()
            response = await client.delete("/admin/audio-cache/entries?voice=alloy", headers=AUTH)
            purged = (await response.json())["deleted"]
            took = time.perf_counter() - t0
            print(f"\npurge by voice: {purged} of {filled} entries in {took:.2f} s")
        finally:
            await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10000,50000", help="cache sizes to measure at")
    parser.add_argument("--entry-bytes", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    asyncio.run(main(sizes, args.entry_bytes, args.samples))
