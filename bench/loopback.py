"""Shared parts of the benchmarks: a bare aiohttp server, speech bodies, a Python load
generator, waiting for a server, quantiles. Everything listens on and talks to 127.0.0.1
only."""

from __future__ import annotations

import asyncio
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

SPEECH = "/v1/audio/speech"
PHRASES = 200

# The baseline and the upstream: answers any POST with the same bytes from memory, which
# is all a cache hit has to do. Arguments: port, path of the audio file to serve, and
# optionally its content type (audio/wav when left out).
BARE_SERVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from aiohttp import web
    audio = Path(sys.argv[2]).read_bytes()
    kind = sys.argv[3] if len(sys.argv) > 3 else "audio/wav"
    async def speech(request):
        await request.read()
        return web.Response(body=audio, content_type=kind)
    app = web.Application()
    app.router.add_post("/{tail:.*}", speech)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
    """
)


def speech_of_size(size: int) -> bytes:
    """A WAV file of exactly ``size`` bytes of real espeak-ng speech (repeated to length), so
    compression does what it does on real audio (it saves little)."""
    from proxy.demo.espeak import SAMPLE_RATE, synthesize_in_a_fresh_process
    from proxy.demo.upstream import wav_file

    text = "Welcome to the hotel. Breakfast is served from seven to ten in the dining room."
    pcm = synthesize_in_a_fresh_process(text, "en", 1.0)
    header = len(wav_file(b"", SAMPLE_RATE))
    wanted = (size - header) // 2 * 2
    pcm = (pcm * (wanted // max(len(pcm), 1) + 1))[:wanted]
    return wav_file(pcm, SAMPLE_RATE) + b"\0" * (size - header - wanted)


def mp3_of_size(size: int) -> bytes:
    """An MP3 stream (128 kbit/s, 24 kHz) of the same real speech, repeated and cut to
    ``size`` bytes: already compressed, so the store keeps it as it is."""
    from proxy.demo.espeak import SAMPLE_RATE, synthesize_in_a_fresh_process
    from proxy.demo.formats import AudioFormat, encode

    text = "Welcome to the hotel. Breakfast is served from seven to ten in the dining room."
    pcm = synthesize_in_a_fresh_process(text, "en", 1.0)
    mp3 = encode(pcm, SAMPLE_RATE, AudioFormat("mp3", 24000, 128000))
    return (mp3 * (size // max(len(mp3), 1) + 1))[:size]


def speech_body(i: int) -> dict[str, str]:
    """The OpenAI-style request for phrase ``i``."""
    return {"model": "tts-1", "voice": "alloy", "input": f"Phrase number {i} for the guests."}


@dataclass
class Run:
    """One measured load: throughput and per-request latencies."""

    name: str
    payload: int
    requests: int
    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        """Latency at quantile ``q``, in ms."""
        return quantile(self.latencies, q) * 1000


def quantile(values: list[float], q: float) -> float:
    """The value at quantile ``q`` (nearest rank below); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def until_ok(
    url: str,
    *,
    within: float = 15.0,
    json: Any = None,
    process: asyncio.subprocess.Process | None = None,
) -> None:
    """Until ``url`` answers 200 (a POST of ``json`` when given, else a GET), for at most
    ``within`` seconds; fails at once when ``process`` (the server) exits."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process is not None and process.returncode is not None:
                raise RuntimeError(f"{url} exited")
            try:
                method = "POST" if json is not None else "GET"
                async with session.request(method, url, json=json) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


async def wait_ready(url: str, within: float = 15.0) -> None:
    """Until ``url`` answers a speech request with 200 (bounded)."""
    await until_ok(url + SPEECH, within=within, json=speech_body(0))


async def python_load(
    url: str, *, requests: int, seconds: float, concurrency: int, phrases: int = PHRASES
) -> Run:
    """A closed loop of ``concurrency`` clients over ``phrases`` speech requests, stopping
    at ``requests`` or ``seconds``, whichever comes first."""
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
                async with session.post(url + SPEECH, json=speech_body(i % phrases)) as r:
                    await r.read()
                    assert r.status == 200
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Run("", 0, len(latencies), elapsed, latencies)
