"""Cleanup at scale: how long it takes over 100k entries and what it does to hit latency.

Fills a private Valkey with ``--entries`` cached answers through the real
``AudioCacheService.put``, then measures hits (``AudioCacheService.get`` from a few
concurrent workers, in the same event loop as the cleanup, as in the proxy) first alone and
then while ``Cleaner.clean`` runs: once from 96% down to
the design document's 80%, once down to 50%.
Prints p50/p99/max hit latency per phase, the ratio to the baseline, and the cleanup's time.

Run: ``python -m bench.cleanup_latency`` (about half a minute on two cores).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import statistics
import time
import uuid
from dataclasses import dataclass

from proxy.background.cleanup import Cleaner, CleanupReport
from proxy.core.compression import CompressionAdvisor
from proxy.core.keys import CacheKey
from proxy.store.client import open_redis
from proxy.store.embedded import EmbeddedValkey, free_port
from proxy.store.service import AudioCacheService, EntryLabels

CLASSES = ("welcome_message", "common_responses", "room_options", "availability_response")


@dataclass
class Phase:
    name: str
    latencies: list[float]

    def line(self, baseline_p99: float | None) -> str:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) * 1000
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000
        ratio = f"{p99 / baseline_p99:5.2f}x" if baseline_p99 else "    - "
        return (
            f"{self.name:<34}{len(lat):>8}{p50:>10.3f}{p99:>10.3f}{lat[-1] * 1000:>10.2f}{ratio:>9}"
        )

    @property
    def p99(self) -> float:
        lat = sorted(self.latencies)
        return lat[int(len(lat) * 0.99) - 1] * 1000


def key(i: int) -> CacheKey:
    return CacheKey(hashlib.sha256(str(i).encode()).hexdigest())


async def fill(service: AudioCacheService, entries: int, size: int, deadline: float) -> int:
    audio = os.urandom(size)
    done = 0
    for start in range(0, entries, 256):
        if time.monotonic() > deadline:
            break
        await asyncio.gather(
            *(
                service.put(
                    key(i),
                    audio,
                    media_type="audio/wav",
                    ttl_seconds=86400,
                    labels=EntryLabels(content_class=CLASSES[i % len(CLASSES)]),
                )
                for i in range(start, min(start + 256, entries))
            )
        )
        done = min(start + 256, entries)
    return done


async def hits_while(
    service: AudioCacheService, keys: list[CacheKey], until: asyncio.Future[object] | float
) -> list[float]:
    """Hit latencies from 4 workers until ``until`` (a future, or seconds), at most 200k."""
    latencies: list[float] = []
    rng = random.Random(1)
    stop_at = time.monotonic() + until if isinstance(until, float) else None

    def done() -> bool:
        if len(latencies) >= 200_000:
            return True
        if stop_at is not None:
            return time.monotonic() >= stop_at
        assert isinstance(until, asyncio.Future)
        return until.done()

    async def worker() -> None:
        while not done():
            k = rng.choice(keys)
            t = time.perf_counter()
            await service.get(k)
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(worker() for _ in range(4)))
    return latencies


async def measure(service: AudioCacheService, cleaner: Cleaner, hot: list[CacheKey],
                  name: str, target_percent: float) -> tuple[Phase, CleanupReport]:  # fmt: skip
    task = asyncio.ensure_future(cleaner.clean(force=True, target_percent=target_percent))
    latencies = await hits_while(service, hot, task)
    return Phase(name, latencies), task.result()


async def run(entries: int, size: int) -> None:
    server = EmbeddedValkey(port=free_port(), extra_args=("--save", ""))
    server.start()
    redis = open_redis(server.url)
    try:
        service = AudioCacheService(
            redis, prefix=f"b{uuid.uuid4().hex[:6]}", advisor=CompressionAdvisor(False, 0, 0)
        )
        started = time.monotonic()
        filled = await fill(service, entries, size, deadline=started + 60)
        fill_seconds = time.monotonic() - started
        totals = await service.totals()
        print(
            f"filled {filled} entries ({totals['bytes'] / 1e6:.1f} MB stored) in "
            f"{fill_seconds:.1f}s"
        )
        # Hits on keys that no cleanup below removes: welcome messages, made popular.
        hot = [key(i) for i in range(0, min(filled, 4000), len(CLASSES))]
        for k in hot:
            await service.get(k)
        await service.flush_counters()
        cleaner = Cleaner(service, max_bytes=int(totals["bytes"] / 0.96))

        baseline = Phase("hits, no cleanup", await hits_while(service, hot, 3.0))
        seed_phase, seed_report = await measure(
            service, cleaner, hot, "hits during cleanup 96% -> 80%", 80
        )
        deep_phase, deep_report = await measure(
            service, cleaner, hot, "hits during cleanup 80% -> 50%", 50
        )
        after = Phase("hits, after", await hits_while(service, hot, 2.0))

        print(
            f"\n{'phase':<34}{'hits':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'p99/base':>9}"
        )
        for phase in (baseline, seed_phase, deep_phase, after):
            print(phase.line(None if phase is baseline else baseline.p99))
        print(f"\n{'cleanup':<34}{'scanned':>8}{'removed':>10}{'MB freed':>10}{'seconds':>10}")
        for label, report in (("96% -> 80%", seed_report), ("80% -> 50%", deep_report)):
            print(
                f"{label:<34}{report.entries_before:>8}{report.entries_removed:>10}"
                f"{report.bytes_freed / 1e6:>10.1f}{report.duration_seconds:>10.2f}"
            )
    finally:
        await redis.aclose()
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1024, help="audio bytes per entry")
    args = parser.parse_args(argv)
    asyncio.run(run(args.entries, args.size))


if __name__ == "__main__":
    main()
