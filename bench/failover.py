"""A Redis Sentinel failover under load: what clients see and what the counters say after.

Starts a real master, one replica and three sentinels (the pip-installed binary), a proxy on
``redis+sentinel://`` in front of a loopback upstream, and ``--clients`` clients asking a
mix of stored sentences (hits) and new ones (misses, then stored). After a second of load it
runs ``SENTINEL FAILOVER`` and keeps the load on for ``--seconds``. It prints the requests
sent, the failed ones (any answer but the right audio), the seconds from the failover until
a stored sentence is a hit again, and the drift (counters minus the entries Redis really
holds) before and after ``repair()``.

Run: ``python -m bench.failover`` (about 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from proxy.app import SERVICE as STORE
from proxy.app import create_app
from proxy.config.settings import load_settings
from proxy.store.embedded import free_port
from tests.support.sentinel import SERVICE, start_sentinels

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


async def main(clients: int, seconds: float) -> list[str]:
    group = start_sentinels()
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
            },
        )
        proxy = create_app(settings, redis_url=group.url)
        runner, url = await serve(proxy)
        runners.append(runner)
        stored = [f"Welcome number {i}" for i in range(20)]
        sent = failures = 0
        async with aiohttp.ClientSession() as session:

            async def ask(text: str) -> str:
                nonlocal sent, failures
                sent += 1
                try:
                    async with session.post(url + SPEECH, json=payload(text)) as r:
                        body = await r.read()
                        if r.status != 200 or body != audio_of(text):
                            failures += 1
                        return r.headers.get("X-Cache", "")
                except aiohttp.ClientError:
                    failures += 1
                    return ""

            for text in stored:
                await ask(text)
            await asyncio.sleep(0.5)  # stored after the last byte
            old_master = group.master_port()
            failover_at: float | None = None
            resumed_at: float | None = None
            deadline = time.monotonic() + seconds

            async def client(n: int) -> None:
                nonlocal resumed_at
                i = 0
                while time.monotonic() < deadline:
                    i += 1
                    text = stored[(n + i) % len(stored)] if i % 4 else f"new {n} {i}"
                    cache = await ask(text)
                    after = failover_at is not None and resumed_at is None and cache == "HIT"
                    if after and group.master_port() != old_master:
                        resumed_at = time.monotonic()
                    await asyncio.sleep(0.01)

            load = [asyncio.create_task(client(n)) for n in range(clients)]
            await asyncio.sleep(1.0)
            failover_at = time.monotonic()
            await asyncio.to_thread(
                group.sentinel().execute_command, "SENTINEL", "FAILOVER", SERVICE
            )
            await asyncio.gather(*load)
        service = proxy[STORE]
        await asyncio.sleep(0.5)
        before = await drift(service)
        report = await service.repair()
        after = await drift(service)
        resume = f"{resumed_at - failover_at:.2f}" if resumed_at and failover_at else "never"
        return [
            "Sentinel failover under load "
            f"({clients} clients, {seconds:.0f} s, master {old_master} -> {group.master_port()})",
            f"requests            {sent}",
            f"failed requests     {failures}",
            f"hits resume after   {resume} s",
            f"drift before repair {before} entries",
            f"repair corrected    {report['corrected'] or '{}'}, "
            f"ghosts removed {report['ghost_records_removed']}",
            f"drift after repair  {after} entries",
        ]
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        group.stop()


def cli() -> None:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    lines = asyncio.run(main(min(args.clients, 64), min(args.seconds, 120.0)))
    for line in lines:
        print(line)


if __name__ == "__main__":
    cli()
