"""The miss path: time to first byte and total time of a miss, and single flight.

A loopback upstream streams 1 s of audio (24 kHz 16-bit mono PCM, 48 000 bytes) in 10
chunks, one every 100 ms after ``--latency`` of synthesis: a TTS service that speaks in real
time. Part 1 times misses straight to the upstream (the baseline) and through the proxy, each
run with a new sentence so every proxied request is a miss; a hit is shown for contrast.
Part 2 sends N identical concurrent misses split over two proxy replicas sharing one real
Valkey, and counts upstream calls: with cross-replica coalescing, with in-process single
flight only (``coalescing_enabled: false``), and with no proxy.

Part 0 is the matrix of the miss time-to-first-byte overhead over going direct: bodies of
20 KB and 137 KB, 24 kHz PCM and MP3, from an upstream that answers at once (one body with
a Content-Length) and one that streams (10 chunks, 20 ms apart), both after 20 ms. It runs
twice: with the client in a process of its own (as clients are: both paths then cross one
process boundary each way), and with the client in the proxy's event loop, where whatever
the proxy does after its first write (storing the entry) delays the client's own read.
Beside the proxy, a bare aiohttp relay (one handler: forward the POST with a pooled client
session, stream the answer back; no cache, no Redis) served the same way as the proxy
shows the floor any aiohttp relay pays over going direct, and so what the proxy's caching
adds over that floor.
The last column is the same proxy with ``upstream_miss_client: aiohttp`` (its misses on
aiohttp's client instead of the lean one), interleaved with the others, each request a
text of its own: the lean client's gain, measured in the same run.

Everything else runs on 127.0.0.1 in one event loop (asyncio's, or uvloop's with
``--loop uvloop``); each part is bounded in runs and seconds. Run:
``python -m bench.miss_path`` (about three minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import multiprocessing
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from proxy.app import create_app
from proxy.config.settings import load_settings
from proxy.store.embedded import EmbeddedValkey, free_port

AUDIO_BYTES = 48_000
CHUNKS = 10
CHUNK_INTERVAL = 0.1
SPEECH = "/v1/audio/speech"


@dataclass
class Upstream:
    latency: float
    calls: int = 0
    texts: list[str] = field(default_factory=list)

    async def speech(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls += 1
        if body["input"].startswith("matrix "):
            return await matrix_answer(request, body["input"])
        seed = body["input"].encode()
        audio = (seed * (AUDIO_BYTES // len(seed) + 1))[:AUDIO_BYTES]
        await asyncio.sleep(self.latency)
        return await streamed(request, audio, "audio/pcm", CHUNK_INTERVAL)


async def streamed(
    request: web.Request, audio: bytes, kind: str, interval: float
) -> web.StreamResponse:
    """``audio`` in ``CHUNKS`` chunked pieces, ``interval`` seconds apart."""
    response = web.StreamResponse(headers={"Content-Type": kind})
    response.enable_chunked_encoding()
    await response.prepare(request)
    step = -(-len(audio) // CHUNKS)
    for i in range(CHUNKS):
        if i:
            await asyncio.sleep(interval)
        await response.write(audio[i * step : (i + 1) * step])
    await response.write_eof()
    return response


MATRIX_LATENCY = 0.02
MATRIX_INTERVAL = 0.02
# The proxy's work after a miss's last byte (its records, the access log) delays the next
# request on whatever path comes next by about a millisecond; each request waits it out.
MATRIX_SETTLE = 0.05
_MP3: list[bytes] = []


def matrix_body(size: int, fmt: str, seed: bytes) -> bytes:
    if fmt == "mp3":
        if not _MP3:
            from .loopback import mp3_of_size

            _MP3.append(mp3_of_size(200 * 1024))
        return _MP3[0][:size]
    return (seed * (size // len(seed) + 1))[:size]


async def matrix_answer(request: web.Request, text: str) -> web.StreamResponse:
    """``matrix SIZE FORMAT MODE ...``: SIZE bytes of PCM or MP3, at once or streamed."""
    _, size, fmt, mode, *_ = text.split()
    audio = matrix_body(int(size), fmt, text.encode())
    kind = "audio/mpeg" if fmt == "mp3" else "audio/pcm"
    await asyncio.sleep(MATRIX_LATENCY)
    if mode == "immediate":
        return web.Response(body=audio, content_type=kind)
    return await streamed(request, audio, kind, MATRIX_INTERVAL)


async def timed_matrix(
    session: aiohttp.ClientSession, url: str, text: str, fmt: str
) -> tuple[float, float]:
    started = time.perf_counter()
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt}
    async with session.post(url + SPEECH, json=body) as response:
        await response.content.readany()
        ttfb = time.perf_counter() - started
        await response.read()
    assert response.status == 200, response.status
    return ttfb, time.perf_counter() - started


Timings = list[tuple[float, float]]
Samples = list[tuple[str, Timings, Timings, Timings, Timings]]


async def matrix_samples(
    upstream_url: str,
    proxy_url: str,
    relay_url: str,
    old_url: str,
    runs: int,
    seconds: float,
    settle: float = MATRIX_SETTLE,
) -> Samples:
    """Per case: (case, direct, miss, relay, old-client miss timings), each miss after its
    direct twin, then the relay, then the proxy whose misses use aiohttp's client (a text
    of its own, so it misses too), each request ``settle`` seconds after the one before."""
    samples: Samples = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        for fmt in ("pcm", "mp3"):
            for kb in (20, 137):
                for mode in ("immediate", "streaming"):
                    direct: list[tuple[float, float]] = []
                    miss: list[tuple[float, float]] = []
                    relay: list[tuple[float, float]] = []
                    old: list[tuple[float, float]] = []
                    for i in range(runs):
                        if time.monotonic() > deadline:
                            break
                        text = f"matrix {kb * 1024} {fmt} {mode} {i} {uuid.uuid4().hex}"
                        for url, timings, said in (
                            (upstream_url, direct, text),
                            (proxy_url, miss, text),
                            (relay_url, relay, text),
                            (old_url, old, text + " old"),
                        ):
                            await asyncio.sleep(settle)
                            timings.append(await timed_matrix(session, url, said, fmt))
                    if direct:
                        case = f"{fmt} {kb:>3}KB {mode:<11}"
                        samples.append((case, direct, miss, relay, old))
    return samples


def matrix_samples_in_a_process(
    upstream_url: str,
    proxy_url: str,
    relay_url: str,
    old_url: str,
    runs: int,
    seconds: float,
    settle: float,
) -> Samples:
    """:func:`matrix_samples` with its own event loop (run in a child process)."""
    return asyncio.run(
        matrix_samples(upstream_url, proxy_url, relay_url, old_url, runs, seconds, settle)
    )


def median_over(slow: Timings, fast: Timings) -> float:
    """Median of the paired differences in time to first byte, in seconds."""
    return statistics.median(s[0] - f[0] for s, f in zip(slow, fast, strict=True))


async def part0(
    upstream_url: str,
    proxy_url: str,
    relay_url: str,
    old_url: str,
    runs: int,
    seconds: float,
    *,
    client_process: bool,
    settle: float = MATRIX_SETTLE,
) -> list[str]:
    """The matrix. ``client_process``: the client runs in a process of its own, as clients
    do, so both paths pay one hop between processes and the proxy's work after its first
    write (storing the entry) runs beside the client's read instead of before it; else the
    client shares this event loop with the upstream and the proxy. ``old_url``: the same
    proxy with ``upstream_miss_client: aiohttp``, for the last column."""
    where = "client in its own process" if client_process else "client, proxy, upstream in one loop"
    lines = [
        f"Miss time to first byte over direct ({where}): median (p90) of {runs} runs per "
        f"case, upstream latency {MATRIX_LATENCY * 1000:.0f} ms, {settle * 1000:.0f} ms between "
        "requests",
        f"{'body':<9}{'upstream':<11}{'direct ms':>10}{'miss ms':>9}{'over p50 ms':>12}"
        f"{'over p90 ms':>12}{'total/direct':>13}{'relay over':>11}{'miss over':>10}"
        f"{'aiohttp-client':>15}",
        f"{'':<9}{'':<11}{'':>10}{'':>9}{'':>12}{'':>12}{'':>13}{'p50 ms':>11}{'relay ms':>10}"
        f"{'miss over p50':>15}",
    ]
    if client_process:
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            samples = await asyncio.get_running_loop().run_in_executor(
                pool,
                matrix_samples_in_a_process,
                upstream_url,
                proxy_url,
                relay_url,
                old_url,
                runs,
                seconds,
                settle,
            )
    else:
        samples = await matrix_samples(
            upstream_url, proxy_url, relay_url, old_url, runs, seconds, settle
        )
    for case, direct, miss, relay, old in samples:
        over = sorted(m[0] - d[0] for d, m in zip(direct, miss, strict=True))
        p90 = over[min(len(over) - 1, int(len(over) * 0.9))]
        d_ttfb = statistics.median(t for t, _ in direct)
        m_ttfb = statistics.median(t for t, _ in miss)
        total = statistics.median(t for _, t in miss) / statistics.median(t for _, t in direct)
        lines.append(
            f"{case}{d_ttfb * 1000:>10.2f}{m_ttfb * 1000:>9.2f}"
            f"{statistics.median(over) * 1000:>12.2f}{p90 * 1000:>12.2f}{total:>13.3f}"
            f"{median_over(relay, direct) * 1000:>11.2f}{median_over(miss, relay) * 1000:>10.2f}"
            f"{median_over(old, direct) * 1000:>15.2f}"
        )
    return lines


RELAY_SESSION = web.AppKey("relay_session", aiohttp.ClientSession)


def relay_app(upstream_url: str) -> web.Application:
    """The least an aiohttp relay does: forward the POST with a pooled session, copy the
    status and the content headers, write each chunk as it arrives. No cache, no Redis."""

    async def session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as client:
            app[RELAY_SESSION] = client
            yield

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        client = request.app[RELAY_SESSION]
        async with client.post(upstream_url + request.path, data=body, headers=headers) as answer:
            response = web.StreamResponse(status=answer.status)
            for name in ("Content-Type", "Content-Length"):
                if name in answer.headers:
                    response.headers[name] = answer.headers[name]
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post(SPEECH, forward)
    return app


@asynccontextmanager
async def site(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def proxy_app(upstream_url: str, redis_url: str, prefix: str, **settings: Any) -> web.Application:
    overrides = {"upstream_url": upstream_url, "audio_cache_key_prefix": prefix, **settings}
    return create_app(load_settings(env={}, overrides=overrides), redis_url=redis_url)


def payload(text: str) -> dict[str, str]:
    return {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}


async def timed(session: aiohttp.ClientSession, url: str, text: str) -> tuple[float, float]:
    """(time to first byte, total time) of one request, in seconds."""
    started = time.perf_counter()
    async with session.post(url + SPEECH, json=payload(text)) as response:
        first = await response.content.readany()
        ttfb = time.perf_counter() - started
        rest = await response.read()
    total = time.perf_counter() - started
    assert response.status == 200 and len(first) + len(rest) == AUDIO_BYTES, response.status
    return ttfb, total


async def part1(upstream_url: str, proxy_url: str, runs: int, seconds: float) -> list[str]:
    samples: dict[str, list[tuple[float, float]]] = {"direct": [], "proxy miss": [], "hit": []}
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        for i in range(runs):
            if time.monotonic() > deadline:
                break
            text = f"Run {i} {uuid.uuid4().hex}: your room is ready."
            samples["direct"].append(await timed(session, upstream_url, text))
            samples["proxy miss"].append(await timed(session, proxy_url, text))
            await asyncio.sleep(0.05)  # the fill stores right after the last byte
            samples["hit"].append(await timed(session, proxy_url, text))
    base_ttfb = statistics.median(t for t, _ in samples["direct"])
    base_total = statistics.median(t for _, t in samples["direct"])
    lines = [
        f"Miss timing: 1 s of audio in {CHUNKS} chunks, median of {len(samples['direct'])} runs",
        f"{'path':<22}{'TTFB ms':>10}{'total ms':>10}{'TTFB/direct':>13}{'total/direct':>14}",
    ]
    for name, label in (
        ("direct", "direct to upstream"),
        ("proxy miss", "proxy, miss"),
        ("hit", "proxy, hit"),
    ):
        ttfb = statistics.median(t for t, _ in samples[name])
        total = statistics.median(t for _, t in samples[name])
        lines.append(
            f"{label:<22}{ttfb * 1000:>10.1f}{total * 1000:>10.1f}"
            f"{ttfb / base_ttfb:>13.3f}{total / base_total:>14.3f}"
        )
    return lines


async def burst(urls: list[str], n: int, text: str) -> tuple[float, list[float], set[bytes]]:
    """(wall time, each request's time to first byte, distinct bodies) of one burst."""

    async def one(session: aiohttp.ClientSession, url: str) -> tuple[float, bytes]:
        started = time.perf_counter()
        async with session.post(url + SPEECH, json=payload(text)) as response:
            assert response.status == 200, response.status
            first = await response.content.readany()
            ttfb = time.perf_counter() - started
            return ttfb, first + await response.read()

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        results = await asyncio.gather(*(one(session, urls[i % len(urls)]) for i in range(n)))
    wall = time.perf_counter() - started
    return wall, [t for t, _ in results], {body for _, body in results}


async def part2(
    upstream: Upstream, upstream_url: str, redis_url: str, n: int, rounds: int, seconds: float
) -> list[str]:
    lines = [
        f"{n} concurrent identical misses split over 2 replicas; median of {rounds} rounds",
        f"{'mode':<30}{'upstream calls':>15}{'TTFB p50 ms':>12}{'wall ms':>9}{'bodies':>8}",
    ]
    modes: list[tuple[str, dict[str, Any] | None]] = [
        ("2 replicas, coalescing on", {}),
        ("2 replicas, in-process only", {"coalescing_enabled": False}),
        ("no proxy (direct)", None),
    ]
    for label, settings in modes:
        calls, walls, ttfbs, distinct = [], [], [], 0
        deadline = time.monotonic() + seconds
        async with _replicas(upstream_url, redis_url, settings) as urls:
            for r in range(rounds):
                if time.monotonic() > deadline:
                    break
                before = upstream.calls
                wall, firsts, bodies = await burst(urls, n, f"Round {r} {uuid.uuid4().hex}: bye")
                calls.append(upstream.calls - before)
                walls.append(wall)
                ttfbs += firsts
                distinct = max(distinct, len(bodies))
        lines.append(
            f"{label:<30}{statistics.median(calls):>15.0f}{statistics.median(ttfbs) * 1000:>12.1f}"
            f"{statistics.median(walls) * 1000:>9.1f}{distinct:>8}"
        )
    return lines


@asynccontextmanager
async def _replicas(
    upstream_url: str, redis_url: str, settings: dict[str, Any] | None
) -> AsyncIterator[list[str]]:
    if settings is None:
        yield [upstream_url]
        return
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    async with (
        site(proxy_app(upstream_url, redis_url, prefix, **settings)) as a,
        site(proxy_app(upstream_url, redis_url, prefix, **settings)) as b,
    ):
        yield [a, b]


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    valkey = EmbeddedValkey(port=free_port())
    valkey.start()
    try:
        upstream = Upstream(latency=args.latency)
        app = web.Application()
        app.router.add_post(SPEECH, upstream.speech)
        async with site(app) as upstream_url:
            prefix = f"bench{uuid.uuid4().hex[:8]}"
            old_client = {"upstream_miss_client": "aiohttp"}
            async with (
                site(proxy_app(upstream_url, valkey.url, prefix)) as proxy_url,
                site(relay_app(upstream_url)) as relay_url,
                site(proxy_app(upstream_url, valkey.url, prefix + "a", **old_client)) as old_url,
            ):
                urls = (upstream_url, proxy_url, relay_url, old_url)
                runs, settle = args.matrix_runs, args.settle_ms / 1000
                table0 = await part0(*urls, runs, 120.0, client_process=True, settle=settle)
                table0 += [""] + await part0(
                    *urls, runs, 120.0, client_process=False, settle=settle
                )
                table1 = await part1(upstream_url, proxy_url, args.runs, args.seconds)
            table2 = await part2(
                upstream, upstream_url, valkey.url, args.n, args.rounds, args.seconds
            )
    finally:
        valkey.stop()
    print(f"event loop: {args.loop}")
    print("\n".join(table0))
    print()
    print("\n".join(table1))
    print()
    print("\n".join(table2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7, help="timed misses per path (≤ 50)")
    parser.add_argument("--matrix-runs", type=int, default=15, help="misses per case (≤ 100)")
    parser.add_argument("--n", type=int, default=50, help="concurrent identical misses")
    parser.add_argument("--rounds", type=int, default=3, help="bursts per mode (≤ 10)")
    parser.add_argument("--latency", type=float, default=0.1, help="upstream time to first byte")
    parser.add_argument("--seconds", type=float, default=20.0, help="time bound of each part")
    parser.add_argument(
        "--settle-ms",
        type=float,
        default=MATRIX_SETTLE * 1000,
        help="part 0: pause before each request, ≥ 5 (the proxy's work after a miss, about "
        "1 ms, must not delay the next request on another path; a long pause lets the code "
        "go cold, as on a quiet proxy, a short one keeps it warm, as under steady traffic)",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of the proxy, the relay and the upstream (the client stays on asyncio)",
    )
    args = parser.parse_args()
    args.runs = max(1, min(args.runs, 50))
    args.matrix_runs = max(1, min(args.matrix_runs, 100))
    args.rounds = max(1, min(args.rounds, 10))
    args.settle_ms = max(5.0, min(args.settle_ms, 1000.0))
    args.n = max(2, min(args.n, 500))
    return args


def run(args: argparse.Namespace) -> None:
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    run(parse_args())
