"""Miss and hit latency through the proxy against the real demo upstream (espeak-ng).

    python -m bench.demo_latency [--n 100]

Starts an embedded Valkey, the demo upstream and the proxy on loopback, then times N
distinct sentences direct to the upstream, N misses through the proxy and N hits of the
same sentences. Prints median / p90 / p99 and the ratios to the direct call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
from aiohttp import web

from proxy.app import create_app
from proxy.config.settings import load_settings
from proxy.demo.upstream import create_demo_upstream_app
from proxy.store.embedded import EmbeddedValkey, free_port

from .loopback import quantile

SENTENCES = [
    "Bienvenido al hotel, su habitación está lista.",
    "El desayuno se sirve de siete a diez de la mañana.",
    "La hora de salida es a las doce del mediodía.",
    "Su habitación tiene vista al mar.",
]


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def _time(session: aiohttp.ClientSession, url: str, text: str) -> tuple[float, str]:
    body = {"model": "tts-1", "input": text, "voice": "es", "response_format": "wav"}
    t0 = time.perf_counter()
    async with session.post(url, json=body) as r:
        await r.read()
        assert r.status == 200, r.status
        return (time.perf_counter() - t0) * 1000, r.headers.get("X-Cache", "-")


async def main(n: int, deadline_s: float) -> None:
    up_port, proxy_port = free_port(), free_port()
    with EmbeddedValkey() as store:
        settings = load_settings(
            env={}, overrides={"upstream_url": f"http://127.0.0.1:{up_port}", "port": proxy_port}
        )
        upstream = await _serve(create_demo_upstream_app(), up_port)
        proxy = await _serve(create_app(settings, redis_url=store.url), proxy_port)
        texts = [f"{SENTENCES[i % len(SENTENCES)]} Número {i}." for i in range(n)]
        stop = time.monotonic() + deadline_s
        rows: dict[str, list[float]] = {"direct to upstream": [], "proxy miss": [], "proxy hit": []}
        async with aiohttp.ClientSession() as session:
            direct = f"http://127.0.0.1:{up_port}/v1/audio/speech"
            via = f"http://127.0.0.1:{proxy_port}/v1/audio/speech"
            for text in texts:
                if time.monotonic() > stop:
                    break
                rows["direct to upstream"].append((await _time(session, direct, text))[0])
                ms, x_cache = await _time(session, via, text)
                assert x_cache == "MISS", x_cache
                rows["proxy miss"].append(ms)
            await asyncio.sleep(0.1)
            for text in texts[: len(rows["proxy miss"])]:
                ms, x_cache = await _time(session, via, text)
                assert x_cache == "HIT", x_cache
                rows["proxy hit"].append(ms)
        await proxy.cleanup()
        await upstream.cleanup()
    base = statistics.median(rows["direct to upstream"])
    print(f"\nDemo upstream (espeak-ng, WAV ~100-200 KB), sequential, n={len(rows['proxy hit'])}")
    print(f"{'path':<22}{'median ms':>11}{'p90 ms':>9}{'p99 ms':>9}{'median/direct':>15}")
    for name, values in rows.items():
        med = statistics.median(values)
        print(
            f"{name:<22}{med:>11.2f}{quantile(values, 0.9):>9.2f}"
            f"{quantile(values, 0.99):>9.2f}{med / base:>15.3f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=90)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.max_seconds))
