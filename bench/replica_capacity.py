"""Hits one proxy replica serves per second, for the sizing in deploy/README.md.

One real ``tts-cache-proxy serve`` process (one event loop: what one pod's core gives) in
front of a loopback upstream, with a real Valkey on loopback. The cache is warmed, then a
bounded closed loop of concurrent clients asks for cached phrases only (hits). Baseline: the
same client against a bare aiohttp server answering the same bytes from memory, so
``vs bare`` is the share of aiohttp's own ceiling the cache path keeps.

The load generator shares the machine with the server (two cores here): absolute figures are
a floor; the ratio is what carries over. Each run is bounded to ``--requests`` and
``--seconds``. Run: ``python -m bench.replica_capacity`` (about 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from proxy.store.embedded import EmbeddedValkey, free_port

from .loopback import BARE_SERVER, PHRASES, Run, python_load, speech_of_size, wait_ready


async def measure(payload: int, args: argparse.Namespace, store_url: str) -> list[Run]:
    upstream_port, proxy_port = free_port(), free_port()
    audio = Path(tempfile.mkdtemp(prefix="replica-capacity-")) / "speech.wav"
    audio.write_bytes(speech_of_size(payload))
    upstream = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BARE_SERVER, str(upstream_port), str(audio),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    env = {**os.environ, "AUDIO_CACHE_KEY_PREFIX": f"b{uuid.uuid4().hex[:8]}",
           "AUDIO_CACHE_MAX_SIZE_MB": "1024", "LOG_LEVEL": "WARNING"}  # fmt: skip
    proxy = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("tts-cache-proxy")), "serve",
        "--upstream", f"http://127.0.0.1:{upstream_port}", "--redis-url", store_url,
        "--port", str(proxy_port),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    runs = []
    try:
        bare, cached = f"http://127.0.0.1:{upstream_port}", f"http://127.0.0.1:{proxy_port}"
        await wait_ready(bare)
        await wait_ready(cached)
        # Warm: every phrase once through the proxy (misses), then the measured hits.
        await python_load(cached, requests=PHRASES, seconds=30, concurrency=8)
        for name, url in (("bare aiohttp (baseline)", bare), ("proxy, cache hits", cached)):
            run = await python_load(
                url, requests=args.requests, seconds=args.seconds, concurrency=args.concurrency
            )
            run.name, run.payload = name, payload
            runs.append(run)
    finally:
        for process in (proxy, upstream):
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--payload-kb", type=int, nargs="*", default=[24, 96])
    args = p.parse_args()
    with EmbeddedValkey(port=free_port()) as store:
        runs: list[Run] = []
        for kb in args.payload_kb:
            runs += asyncio.run(measure(kb * 1024, args, store.url))
    print(f"{'variant':<26}{'audio':>8}{'req/s':>9}{'vs bare':>9}{'p50 ms':>8}"
          f"{'p99 ms':>8}{'MB/s':>8}")  # fmt: skip
    for i, run in enumerate(runs):
        base = runs[i - i % 2]
        print(
            f"{run.name:<26}{run.payload // 1024:>6}KB{run.rate:>9.0f}"
            f"{run.rate / base.rate:>9.2f}{run.percentile(0.5):>8.1f}{run.percentile(0.99):>8.1f}"
            f"{run.rate * run.payload / 1e6:>8.1f}"
        )
    mean_ms = statistics.mean(runs[-1].latencies) * 1000
    print(
        f"(at most {args.requests} requests or {args.seconds:.0f} s per run, "
        f"{args.concurrency} concurrent clients, {os.cpu_count()} cores shared with the "
        f"client; mean latency {mean_ms:.1f} ms in the last run)"
    )


if __name__ == "__main__":
    main()
