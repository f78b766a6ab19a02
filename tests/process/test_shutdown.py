"""Graceful shutdown of a real ``tts-cache-proxy serve`` process on SIGTERM.

A slow streaming loopback upstream, a real Valkey, the installed console script: readiness
turns false, new connections are refused after the delay, in-flight streamed misses finish
and are stored, the process exits 0 — and the drain is bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.store.embedded import EmbeddedValkey, free_port
from tests.support.loopback_upstream import fake_wav
from tests.support.proxies import ProxyFactory, service_of
from tests.support.servers import served
from tests.support.speech import SPEECH_PATH, speech_body
from tests.support.waits import wait_ready

CHUNKS = 12


class SlowUpstream:
    """Streams each answer in ``CHUNKS`` pieces, ``pause`` seconds apart."""

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.calls = 0
        self.streaming = asyncio.Event()

    async def speech(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls += 1
        audio = fake_wav(body["input"], body["voice"])
        response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        response.content_length = len(audio)
        await response.prepare(request)
        step = len(audio) // CHUNKS + 1
        for i in range(0, len(audio), step):
            await response.write(audio[i : i + step])
            self.streaming.set()
            await asyncio.sleep(self.pause)  # a slow synthesis: the drain must outlast it
        await response.write_eof()
        return response


@pytest.fixture
async def slow_upstream(request: pytest.FixtureRequest) -> AsyncIterator[tuple[SlowUpstream, str]]:
    fake = SlowUpstream(pause=getattr(request, "param", 0.25))
    app = web.Application()
    app.router.add_post(SPEECH_PATH, fake.speech)
    async with served(app) as url:
        yield fake, url


def _console_script() -> str:
    path = Path(sys.executable).with_name("tts-cache-proxy")
    assert path.exists(), "the tts-cache-proxy console script is installed in the venv"
    return str(path)


async def _serve(upstream_url: str, redis_url: str, prefix: str, **env: str) -> tuple[
    asyncio.subprocess.Process, str
]:  # fmt: skip
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        _console_script(), "serve", "--upstream", upstream_url, "--redis-url", redis_url,
        "--port", str(port),
        env={**os.environ, "AUDIO_CACHE_KEY_PREFIX": prefix, "LOG_LEVEL": "INFO", **env},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, process, seconds=15)
    except AssertionError:
        if process.returncode is not None:
            raise  # it exited: the message carries its stderr
        process.kill()
        _, err = await process.communicate()
        raise AssertionError(f"proxy did not become ready: {err.decode()[-800:]}") from None
    return process, base


async def _probe(base: str) -> int | None:
    """/readyz on a fresh connection: its status, or None when the connection is refused."""
    try:
        connector = aiohttp.TCPConnector(force_close=True)
        timeout = aiohttp.ClientTimeout(total=2)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as s,
            s.get(base + "/readyz") as r,
        ):
            return r.status
    except aiohttp.ClientConnectionError:
        return None


async def test_sigterm_drains_a_streamed_miss(
    slow_upstream: tuple[SlowUpstream, str],
    valkey: EmbeddedValkey,
    make_proxy: ProxyFactory,
) -> None:
    fake, upstream_url = slow_upstream
    prefix = f"g{uuid.uuid4().hex[:10]}"
    process, base = await _serve(
        upstream_url, valkey.url, prefix, SHUTDOWN_DELAY_SECONDS="1", SHUTDOWN_DRAIN_SECONDS="20"
    )
    text = "Our check-in time is three in the afternoon"

    async def listen() -> tuple[int, str, bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(base + SPEECH_PATH, json=speech_body(text)) as r,
        ):
            return r.status, r.headers["X-Cache"], await r.read()

    client = asyncio.create_task(listen())
    await asyncio.wait_for(fake.streaming.wait(), 10)
    assert process.returncode is None
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    seen: list[int | None] = []
    while not client.done() and time.monotonic() - signalled < 10:
        seen.append(await _probe(base))
        await asyncio.sleep(0.1)  # a sample of readiness every 0.1 s while the drain goes on
    # Not ready while still serving (the delay), then the listener is closed.
    assert 503 in seen and 200 not in seen
    assert seen[-1] is None, seen
    assert seen.index(None) > seen.index(503)

    status, cache, audio = await asyncio.wait_for(client, 20)
    assert (status, cache) == (200, "MISS")
    assert audio == fake_wav(text, "alloy")
    assert await asyncio.wait_for(process.wait(), 20) == 0
    stderr = (await process.stderr.read()).decode() if process.stderr else ""
    assert "shutting down" in stderr

    # Stored before exit: another proxy on the same prefix answers from the cache.
    other = await make_proxy(upstream_url, prefix=prefix)
    again = await other.post(SPEECH_PATH, json=speech_body(text))
    assert again.headers["X-Cache"] == "HIT" and await again.read() == audio
    assert fake.calls == 1


async def test_fill_without_a_reader_is_stored_during_the_drain(
    slow_upstream: tuple[SlowUpstream, str],
    valkey: EmbeddedValkey,
    make_proxy: ProxyFactory,
) -> None:
    fake, upstream_url = slow_upstream
    prefix = f"g{uuid.uuid4().hex[:10]}"
    process, base = await _serve(upstream_url, valkey.url, prefix, SHUTDOWN_DRAIN_SECONDS="20")
    text = "The pool opens at eight"
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + SPEECH_PATH, json=speech_body(text)) as r,
    ):
        await r.content.readany()  # the client hangs up mid-stream
    await asyncio.wait_for(fake.streaming.wait(), 10)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 20) == 0
    other = await make_proxy(upstream_url, prefix=prefix)
    again = await other.post(SPEECH_PATH, json=speech_body(text))
    assert again.headers["X-Cache"] == "HIT"
    assert await again.read() == fake_wav(text, "alloy")


@pytest.mark.parametrize("slow_upstream", [5.0], indirect=True)
async def test_drain_is_bounded(
    slow_upstream: tuple[SlowUpstream, str],
    valkey: EmbeddedValkey,
    make_proxy: ProxyFactory,
) -> None:
    fake, upstream_url = slow_upstream
    prefix = f"g{uuid.uuid4().hex[:10]}"
    process, base = await _serve(upstream_url, valkey.url, prefix, SHUTDOWN_DRAIN_SECONDS="1")

    async def listen() -> bytes:
        async with (
            aiohttp.ClientSession() as session,
            session.post(base + SPEECH_PATH, json=speech_body("A very slow sentence")) as r,
        ):
            return await r.read()

    client = asyncio.create_task(listen())
    await asyncio.wait_for(fake.streaming.wait(), 10)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 15) == 0
    assert time.monotonic() - started < 5  # 1 s drain, well before the 60 s stream ends
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(client, 10)
    # A truncated answer is never stored.
    other = await make_proxy(upstream_url, prefix=prefix)
    assert (await service_of(other).totals())["entries"] == 0
