"""Redis bytes written per miss: what a miss costs the store, counted by Valkey itself.

A loopback upstream answers each new sentence with ``--audio-kb`` of random PCM (random, so
compression cannot hide a copy), with a Content-Length. The proxy runs in-process on a
private Valkey; the figure is the growth of Valkey's ``total_net_input_bytes`` (every byte
clients sent it: commands, arguments, audio) per miss, less what the idle proxy sends in as
long (sweeps, counter flushes), as a multiple of the audio size. Three cases:

- ``alone``: one request per sentence, nobody else asks for it;
- ``followed``: the same sentence asked twice on each of two replicas at once (one
  upstream call; the other replica follows the leader's fill stream);
- ``too large``: an answer over ``audio_cache_max_entry_size_mb`` (so never stored).

``stream bytes`` is the store's own count of audio copied into fill streams (0 where the
running code does not count it). Run: ``python -m bench.miss_writes`` (about 15 s); to
compare with an earlier commit, run it with ``PYTHONPATH`` pointing at that commit's tree.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from proxy.app import SERVICE, create_app
from proxy.config.settings import load_settings
from proxy.store.client import open_redis
from proxy.store.embedded import EmbeddedValkey, free_port

SPEECH = "/v1/audio/speech"


class Upstream:
    def __init__(self) -> None:
        self.size = 0
        self.calls = 0

    async def speech(self, request: web.Request) -> web.StreamResponse:
        await request.json()
        self.calls += 1
        audio = os.urandom(self.size)
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        response.content_length = len(audio)
        await response.prepare(request)
        step = 16 * 1024
        for i in range(0, len(audio), step):
            await response.write(audio[i : i + step])
            await asyncio.sleep(0.002)  # a TTS service speaks as it synthesizes
        await response.write_eof()
        return response


@asynccontextmanager
async def site(app: web.Application) -> AsyncIterator[tuple[str, web.Application]]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        await runner.cleanup()


def proxy_app(upstream_url: str, redis_url: str, prefix: str, **settings: Any) -> web.Application:
    overrides = {
        "upstream_url": upstream_url,
        "audio_cache_key_prefix": prefix,
        "client_auth": "none",
        **settings,
    }
    return create_app(load_settings(env={}, overrides=overrides), redis_url=redis_url)


def payload(text: str) -> dict[str, str]:
    return {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}


async def net_in(redis: Any) -> int:
    return int((await redis.info("stats"))["total_net_input_bytes"])


async def ask(session: aiohttp.ClientSession, url: str, text: str) -> int:
    async with session.post(url + SPEECH, json=payload(text)) as response:
        body = await response.read()
        assert response.status == 200, response.status
        return len(body)


async def measure(
    redis: Any, urls: list[str], apps: list[web.Application], size: int, runs: int, per: int
) -> tuple[float, int, float]:
    """(Redis bytes in per miss, stream bytes counted, seconds) for ``runs`` sentences, each
    asked ``per`` times on every replica at once."""
    service = apps[0][SERVICE]
    stream_before = (await service.totals())["stream_bytes"]
    before = await net_in(redis)
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        for _ in range(runs):
            text = f"Your room {uuid.uuid4().hex} is ready."
            sizes = await asyncio.gather(
                *(ask(session, url, text) for url in urls for _ in range(per))
            )
            assert set(sizes) == {size}, sizes
    await asyncio.sleep(0.5)  # the last entry is stored after its last byte
    elapsed = time.monotonic() - started
    written = await net_in(redis) - before
    stream = (await service.totals())["stream_bytes"] - stream_before
    return written / runs, stream, elapsed


async def idle_rate(redis: Any, seconds: float = 2.0) -> float:
    before = await net_in(redis)
    await asyncio.sleep(seconds)
    return (await net_in(redis) - before) / seconds


async def main(audio_kb: int, runs: int) -> list[str]:
    upstream = Upstream()
    up_app = web.Application()
    up_app.router.add_post(SPEECH, upstream.speech)
    size = audio_kb * 1024
    lines = [
        f"Redis bytes in per miss ({audio_kb} KB of random audio, {runs} sentences per case)",
        f"{'case':<12}{'bytes in':>12}{'x audio':>9}{'stream bytes':>14}{'upstream calls':>16}",
    ]
    with EmbeddedValkey(port=free_port()) as store:
        redis = open_redis(store.url)
        async with site(up_app) as (up_url, _):
            prefix = f"w{uuid.uuid4().hex[:8]}"
            limit_mb = 2 * audio_kb / 1024
            async with (
                site(proxy_app(up_url, store.url, prefix)) as (a_url, a_app),
                site(proxy_app(up_url, store.url, prefix)) as (b_url, b_app),
            ):
                await asyncio.sleep(0.5)
                idle = await idle_rate(redis)
                for case, urls, apps, per, answer in (
                    ("alone", [a_url], [a_app], 1, size),
                    ("followed", [a_url, b_url], [a_app, b_app], 2, size),
                ):
                    upstream.size, upstream.calls = answer, 0
                    per_miss, stream, elapsed = await measure(redis, urls, apps, answer, runs, per)
                    per_miss -= idle * elapsed / runs
                    lines.append(
                        f"{case:<12}{per_miss:>12,.0f}{per_miss / answer:>9.2f}"
                        f"{stream:>14,}{upstream.calls:>16}"
                    )
            # Answers over the entry limit, on replicas with a limit of twice the audio.
            async with (
                site(proxy_app(up_url, store.url, prefix, audio_cache_max_entry_size_mb=limit_mb))
                as (a_url, a_app),
                site(proxy_app(up_url, store.url, prefix, audio_cache_max_entry_size_mb=limit_mb))
                as (b_url, b_app),
            ):  # fmt: skip
                upstream.size, upstream.calls = 3 * size, 0
                per_miss, stream, elapsed = await measure(
                    redis, [a_url, b_url], [a_app, b_app], 3 * size, runs, 2
                )
                per_miss -= idle * elapsed / runs
                lines.append(
                    f"{'too large':<12}{per_miss:>12,.0f}{per_miss / (3 * size):>9.2f}"
                    f"{stream:>14,}{upstream.calls:>16}"
                )
        lines.append(f"(idle proxy traffic subtracted: {idle:,.0f} bytes/s)")
        await redis.aclose()
    return lines


def cli() -> None:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--audio-kb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    for line in asyncio.run(main(args.audio_kb, min(args.runs, 100))):
        print(line)


if __name__ == "__main__":
    cli()
