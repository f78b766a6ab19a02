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
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from proxy.embedded import EmbeddedValkey, free_port

SPEECH = "/v1/audio/speech"
PHRASES = 200


@dataclass
class Run:
    name: str
    payload: int
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


UPSTREAM = textwrap.dedent(
    """
    import sys
    from aiohttp import web
    size = int(sys.argv[2])
    async def speech(request):
        body = await request.json()
        audio = (body["input"].encode() * (size // len(body["input"]) + 1))[:size]
        return web.Response(body=b"RIFF" + audio, content_type="audio/wav")
    app = web.Application()
    app.router.add_post("/v1/audio/speech", speech)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
    """
)


async def _wait_ready(url: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.post(url + SPEECH, json=_body(0)) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def _body(i: int) -> dict[str, str]:
    return {"model": "tts-1", "voice": "alloy", "input": f"Phrase number {i} for the guests."}


async def _load(url: str, *, requests: int, seconds: float, concurrency: int) -> Run:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for i in counter:
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                async with session.post(url + SPEECH, json=_body(i % PHRASES)) as r:
                    await r.read()
                    assert r.status == 200
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Run("", 0, len(latencies), elapsed, latencies)


async def measure(payload: int, args: argparse.Namespace, store_url: str) -> list[Run]:
    upstream_port, proxy_port = free_port(), free_port()
    upstream = await asyncio.create_subprocess_exec(
        sys.executable, "-c", UPSTREAM, str(upstream_port), str(payload),
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
        await _wait_ready(bare)
        await _wait_ready(cached)
        # Warm: every phrase once through the proxy (misses), then the measured hits.
        await _load(cached, requests=PHRASES, seconds=30, concurrency=8)
        for name, url in (("bare aiohttp (baseline)", bare), ("proxy, cache hits", cached)):
            run = await _load(
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
