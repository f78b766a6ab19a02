"""Soak: mixed hits, misses, purges and cleanups against a small cache, every byte checked.

    python -m bench.soak [--seconds 120] [--concurrency 8]

A real proxy (embedded Valkey, the espeak-ng demo upstream) with a cache far smaller than
the working set, so cleanup runs all the time. Clients ask for sentences from a skewed
pool; every answer is compared with the upstream's own deterministic answer for that
request. Meanwhile a purger deletes entries and clears voices, and cleanups are forced.
Reports requests, errors, wrong bytes, and the process's RSS and open file descriptors at
start and end. Bounded by time and by request count; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from proxy.app import SERVICE, create_app
from proxy.background.cleanup import run_cleanup
from proxy.config.settings import load_settings
from proxy.core.keys import CacheKey
from proxy.demo.upstream import create_demo_upstream_app
from proxy.store.embedded import EmbeddedValkey, free_port

VOICES = ("en", "es", "fr")


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class SoakReport:
    seconds: float = 0.0
    requests: int = 0
    errors: int = 0
    wrong_bytes: int = 0
    results: Counter[str] = field(default_factory=Counter)
    purges: int = 0
    cleanups: int = 0
    rss_start_kb: int = 0
    rss_warm_kb: int = 0  # after the first quarter: caches and pools have filled
    rss_end_kb: int = 0
    fds_start: int = 0
    fds_end: int = 0

    def table(self) -> str:
        rows = [
            ("duration s", f"{self.seconds:.1f}"),
            ("requests", str(self.requests)),
            ("by result", ", ".join(f"{k}={v}" for k, v in sorted(self.results.items()))),
            ("errors", str(self.errors)),
            ("wrong bytes", str(self.wrong_bytes)),
            ("purges / forced cleanups", f"{self.purges} / {self.cleanups}"),
            (
                "RSS start -> warm -> end MB",
                f"{self.rss_start_kb / 1024:.1f} -> {self.rss_warm_kb / 1024:.1f}"
                f" -> {self.rss_end_kb / 1024:.1f}",
            ),
            ("open fds start -> end", f"{self.fds_start} -> {self.fds_end}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def _body(text: str, voice: str) -> dict[str, str]:
    return {"model": "tts-1", "input": text, "voice": voice, "response_format": "wav"}


async def run_soak(
    seconds: float,
    *,
    concurrency: int = 8,
    max_requests: int = 200_000,
    sentences: int = 120,
    min_requests: int = 0,
    max_seconds: float | None = None,
) -> SoakReport:
    """Run the soak for ``seconds`` and at least ``min_requests`` requests (a busy machine
    makes fewer per second), but never past ``max_seconds``; the report says what happened."""
    report = SoakReport(rss_start_kb=rss_kb(), fds_start=open_fds())
    up_port, proxy_port = free_port(), free_port()
    pool = [(f"Sentence number {i} for the soak test.", VOICES[i % 3]) for i in range(sentences)]
    weights = [1.0 / (i + 1) for i in range(sentences)]  # Zipf-like: a few are hot
    expected: dict[tuple[str, str], bytes] = {}
    with EmbeddedValkey() as store:
        settings = load_settings(
            env={},
            overrides={
                "upstream_url": f"http://127.0.0.1:{up_port}",
                "audio_cache_max_size_mb": 1.5,  # ~15 answers of a ~120-sentence pool
                "audio_cache_compression_threshold_kb": 64,
                "audio_cache_stats_flush_seconds": 0.2,
                "audio_cache_sweep_interval_seconds": 0.2,
            },
        )
        upstream = await _serve(create_demo_upstream_app(), up_port)
        proxy_app = create_app(settings, redis_url=store.url)
        proxy = await _serve(proxy_app, proxy_port)
        service = proxy_app[SERVICE]
        deadline = time.monotonic() + seconds
        started = time.monotonic()
        hard_deadline = started + max(seconds, max_seconds or seconds)

        def going() -> bool:
            now = time.monotonic()
            wanted = now < deadline or report.requests < min_requests
            return wanted and now < hard_deadline and report.requests < max_requests

        rng = random.Random(7)
        async with aiohttp.ClientSession() as session:
            direct = f"http://127.0.0.1:{up_port}/v1/audio/speech"
            via = f"http://127.0.0.1:{proxy_port}/v1/audio/speech"
            for text, voice in pool:  # the upstream's own answer, to check every byte against
                async with session.post(direct, json=_body(text, voice)) as r:
                    expected[(text, voice)] = await r.read()

            async def client() -> None:
                while going():
                    text, voice = rng.choices(pool, weights)[0]
                    report.requests += 1
                    try:
                        async with session.post(via, json=_body(text, voice)) as r:
                            body = await r.read()
                            if r.status != 200:
                                report.errors += 1
                                continue
                            report.results[r.headers.get("X-Cache", "?")] += 1
                            if body != expected[(text, voice)]:
                                report.wrong_bytes += 1
                    except (aiohttp.ClientError, TimeoutError):
                        report.errors += 1

            async def purger() -> None:
                rounds = 0
                while going() or rounds == 0:
                    rounds += 1
                    await asyncio.sleep(0.5)
                    text, voice = rng.choice(pool)
                    async with session.post(via, json=_body(text, voice)) as r:
                        await r.read()
                        key = CacheKey.parse(r.headers.get("X-Audio-Cache-Key", ""))
                    if key is not None:
                        await service.delete(key)
                    if rounds % 5 == 0:
                        await service.purge(voice=rng.choice(VOICES))
                    report.purges += 1
                    if rounds % 3 == 1:  # from the first round, so even a short run cleans
                        await run_cleanup(proxy_app, force=True, target_percent=50)
                        report.cleanups += 1

            async def sampler() -> None:
                await asyncio.sleep(seconds / 4)
                report.rss_warm_kb = rss_kb()

            await asyncio.gather(*(client() for _ in range(concurrency)), purger(), sampler())
        report.seconds = time.monotonic() - started
        await proxy.cleanup()
        await upstream.cleanup()
    report.rss_end_kb, report.fds_end = rss_kb(), open_fds()
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    result = asyncio.run(run_soak(args.seconds, concurrency=args.concurrency))
    print(result.table())
