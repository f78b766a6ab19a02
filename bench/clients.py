"""Real voice-agent frameworks, with their defaults, through the proxy.

    pip install -e '.[clients]'
    python -m bench.clients [--max-seconds 120]

Starts an embedded Valkey, the demo upstream (espeak-ng) and the proxy with its default
settings on loopback, then drives two frameworks' OpenAI text-to-speech services, changing
only the base URL and the API key (a dummy one):

- pipecat's ``OpenAITTSService`` in a minimal pipeline (the service, then a sink that keeps
  the ``TTSAudioRawFrame`` objects): ``gpt-4o-mini-tts``, voice ``alloy``, raw PCM;
- livekit-plugins-openai's ``TTS()``: ``gpt-4o-mini-tts``, voice ``ash``, MP3 asked for
  with ``stream_format: "sse"`` (the plugin asks for SSE for every model but tts-1 and
  tts-1-hd), decoded by livekit into ``rtc.AudioFrame`` objects.

Each client speaks the same sentences twice. Per client and run the table shows the proxy's
requests and their cache results (from its access-log records), the calls that reached the
upstream, the store's get hits, misses and stores (``audio_cache_operations_total`` scraped
from ``/metrics`` before and after), the audio frames, the sample rate and channels they
claim, the seconds of audio, whether that is plausible (about the duration espeak-ng needs
for the text, at most a few frames of silence only: an MP3 decoder's priming), and whether a
later run decoded to the same samples as the first. With the default ``client_auth``
(``upstream``) the first request of a credential is never served from the cache, so a first
run is all misses; the second run should come from the cache. A client whose requests the
proxy bypasses says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import re
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

SENTENCES = (
    "Welcome to the hotel, your room is ready.",
    "Breakfast is served from seven to ten in the morning.",
    "Checkout is at noon, and the front desk is open all night.",
    "Your room has a view of the sea.",
)
RUNS = 2
API_KEY = "sk-dummy-key-for-the-bench"
SPEECH_PATH = "/v1/audio/speech"
# A frame whose loudest sample is below this (about -60 dBFS) counts as silence only.
SILENCE_PEAK = 32
# An MP3 decoder's first frames are the encoder's priming silence (livekit hands them on as
# 10 ms frames); audio decoded wrongly or not at all is mostly silence.
MAX_SILENT_SHARE = 0.05
# The demo's espeak-ng speaks these sentences at about 20 characters a second; audio
# decoded at the wrong rate or in the wrong format lands far outside this band.
PLAUSIBLE_CHARS_PER_SECOND = (6.0, 30.0)

_OPERATION = re.compile(
    r'^audio_cache_operations_total\{operation="(\w+)",result="(\w+)"\}\s+([0-9.eE+]+)$'
)


@dataclass
class Run:
    """What one client's run over the sentences produced, as observed at both ends."""

    client: str
    run: int
    requests: int = 0
    results: Counter[str] = field(default_factory=Counter)
    upstream_calls: int = 0
    store: dict[str, float] = field(default_factory=dict)
    frames: int = 0
    sample_rates: set[int] = field(default_factory=set)
    channels: set[int] = field(default_factory=set)
    samples: int = 0
    silent_frames: int = 0
    silent_samples: int = 0
    characters: int = 0
    error: str = ""
    audio: Any = field(default_factory=hashlib.sha256, repr=False)

    @property
    def seconds(self) -> float:
        rate = next(iter(self.sample_rates)) if len(self.sample_rates) == 1 else 0
        return self.samples / rate if rate else 0.0

    @property
    def silent_seconds(self) -> float:
        return self.seconds * self.silent_samples / self.samples if self.samples else 0.0

    def add_frame(self, pcm: bytes | memoryview, rate: int, channels: int, samples: int) -> None:
        """Count one audio frame of 16-bit PCM (``samples`` per channel)."""
        self.frames += 1
        self.sample_rates.add(rate)
        self.channels.add(channels)
        self.samples += samples
        self.audio.update(pcm)
        if is_silent(pcm):
            self.silent_frames += 1
            self.silent_samples += samples

    @property
    def served_from_cache(self) -> bool:
        return (
            self.requests > 0
            and self.results.get("hit", 0) == self.requests
            and self.upstream_calls == 0
        )


def tally(records: Iterable[dict[str, Any]], path: str = SPEECH_PATH) -> Counter[str]:
    """Cache results (hit, miss, bypass, ...) of the access-log records for ``path``."""
    return Counter(str(r.get("result", "other")) for r in records if r.get("path") == path)


def store_operations(exposition: str) -> dict[str, float]:
    """``audio_cache_operations_total`` by ``operation:result`` from a /metrics page."""
    found: dict[str, float] = {}
    for line in exposition.splitlines():
        match = _OPERATION.match(line.strip())
        if match:
            found[f"{match[1]}:{match[2]}"] = float(match[3])
    return found


def operations_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What changed between two scrapes (a counter missing before counts from zero)."""
    keys = sorted(set(before) | set(after))
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    return {k: v for k, v in delta.items() if v}


def is_silent(pcm: bytes | memoryview, peak: int = SILENCE_PEAK) -> bool:
    """Whether 16-bit little-endian PCM holds nothing louder than ``peak``."""
    raw = bytes(pcm)
    samples = array("h")
    samples.frombytes(raw[: len(raw) - len(raw) % 2])
    return not samples or max(abs(s) for s in samples) < peak


def plausible(run: Run) -> str:
    """``ok`` or why the audio does not look like the text spoken at the claimed rate."""
    if run.error:
        return "error"
    if not run.frames:
        return "no audio"
    if len(run.sample_rates) != 1 or len(run.channels) != 1:
        return f"mixed rates {sorted(run.sample_rates)} / channels {sorted(run.channels)}"
    if run.silent_samples > MAX_SILENT_SHARE * run.samples:
        return f"{run.silent_seconds:.2f} s silent"
    low, high = PLAUSIBLE_CHARS_PER_SECOND
    rate = run.characters / run.seconds if run.seconds else float("inf")
    if not low <= rate <= high:
        return f"{rate:.1f} chars/s"
    return "ok"


def same_audio(runs: Sequence[Run], run: Run) -> str:
    """Whether ``run`` decoded to the same samples as the same client's first run."""
    first = next((r for r in runs if r.client == run.client and r.run == 1), None)
    if first is None or first is run:
        return "-"
    return "yes" if first.audio.digest() == run.audio.digest() else "no"


def cache_verdict(run: Run) -> str:
    """The second run's answer to "served from the cache?", stated from what was seen."""
    if run.served_from_cache:
        return "yes"
    bypassed = run.results.get("bypass", 0)
    if bypassed:
        return f"no ({bypassed} bypassed)"
    return f"no ({run.upstream_calls} upstream calls)"


def _results(counts: Counter[str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"


def _store(delta: dict[str, float]) -> str:
    hits, misses = int(delta.get("get:hit", 0)), int(delta.get("get:miss", 0))
    stored = int(delta.get("set:stored", 0))
    return f"{hits}/{misses}/{stored}"


def format_table(runs: Sequence[Run]) -> str:
    """The table the bench prints: one line per client and run."""
    header = (
        f"{'client':<10}{'run':>4}{'reqs':>6}  {'proxy results':<20}{'upstr':>6}"
        f"{'hit/miss/set':>14}{'frames':>8}{'rate Hz':>9}{'ch':>4}{'audio s':>9}"
        f"{'silent':>13}{'chars/s':>8}  {'audio check':<14}{'as run 1':<10}{'from cache'}"
    )
    lines = [header, "-" * len(header)]
    for r in runs:
        rates = ",".join(str(x) for x in sorted(r.sample_rates)) or "-"
        channels = ",".join(str(x) for x in sorted(r.channels)) or "-"
        from_cache = cache_verdict(r) if r.run > 1 else "(first run)"
        lines.append(
            f"{r.client:<10}{r.run:>4}{r.requests:>6}  {_results(r.results):<20}"
            f"{r.upstream_calls:>6}{_store(r.store):>14}{r.frames:>8}{rates:>9}{channels:>4}"
            f"{r.seconds:>9.2f}{f'{r.silent_frames} / {r.silent_seconds:.2f}s':>13}"
            f"{r.characters / r.seconds if r.seconds else 0:>8.1f}  {plausible(r):<14}"
            f"{same_audio(runs, r):<10}{from_cache}"
        )
        if r.error:
            lines.append(f"    error: {r.error}")
    return "\n".join(lines)


class AccessRecords(logging.Handler):
    """Keeps the structured fields of the proxy's access-log records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.fields: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            self.fields.append(fields)


def _frameworks() -> tuple[Any, Any]:
    """Import both frameworks before any server starts: their imports take seconds and
    would stall the event loop the proxy runs on."""
    import livekit.plugins.openai as livekit_openai
    import pipecat.services.openai.tts as pipecat_tts
    from loguru import logger

    logger.remove()
    logger.add(lambda message: print(message, end=""), level="WARNING")
    return pipecat_tts, livekit_openai


async def _pipecat(base_url: str, texts: Sequence[str], run: Run, module: Any) -> None:
    from pipecat.frames.frames import EndFrame, Frame, TTSAudioRawFrame, TTSSpeakFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    class Sink(FrameProcessor):  # type: ignore[misc]
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, TTSAudioRawFrame):
                rate, channels = frame.sample_rate, frame.num_channels
                run.add_frame(frame.audio, rate, channels, frame.num_frames)
            await self.push_frame(frame, direction)

    tts = module.OpenAITTSService(api_key=API_KEY, base_url=base_url)
    worker = PipelineWorker(Pipeline([tts, Sink()]))
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await worker.queue_frames([TTSSpeakFrame(text) for text in texts] + [EndFrame()])
    await runner.run()


async def _livekit(base_url: str, texts: Sequence[str], run: Run, module: Any) -> None:
    tts = module.TTS(base_url=base_url, api_key=API_KEY)
    try:
        for text in texts:
            async with tts.synthesize(text) as stream:
                async for audio in stream:
                    f = audio.frame
                    pcm = f.data.cast("B")
                    run.add_frame(pcm, f.sample_rate, f.num_channels, f.samples_per_channel)
    finally:
        await tts.aclose()


async def _serve(app: web.Application, port: int, **options: Any) -> web.AppRunner:
    runner = web.AppRunner(app, **options)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def main(max_seconds: float) -> list[Run]:
    from proxy.app import create_app
    from proxy.config.settings import load_settings
    from proxy.demo.upstream import create_demo_upstream_app
    from proxy.observability.access_log import runner_options
    from proxy.store.embedded import EmbeddedValkey, free_port

    pipecat_tts, livekit_openai = _frameworks()
    clients = (("pipecat", _pipecat, pipecat_tts), ("livekit", _livekit, livekit_openai))
    records = AccessRecords()
    access = logging.getLogger("proxy.access")
    access.addHandler(records)
    access.setLevel(logging.INFO)
    access.propagate = False
    upstream_calls: list[str] = []

    async def count_upstream(request: web.Request, response: web.StreamResponse) -> None:
        if request.path == SPEECH_PATH:
            upstream_calls.append(request.path)

    up_port, proxy_port = free_port(), free_port()
    runs: list[Run] = []
    stop = time.monotonic() + max_seconds
    with EmbeddedValkey() as store:
        settings = load_settings(
            env={}, overrides={"upstream_url": f"http://127.0.0.1:{up_port}", "port": proxy_port}
        )
        upstream_app = create_demo_upstream_app()
        upstream_app.on_response_prepare.append(count_upstream)
        upstream = await _serve(upstream_app, up_port, access_log=None)
        options = runner_options(access_log=True, idle_timeout=settings.client_idle_timeout_seconds)
        proxy = await _serve(create_app(settings, redis_url=store.url), proxy_port, **options)
        base_url = f"http://127.0.0.1:{proxy_port}/v1"
        try:
            async with aiohttp.ClientSession() as session:

                async def scrape() -> dict[str, float]:
                    async with session.get(f"http://127.0.0.1:{proxy_port}/metrics") as r:
                        return store_operations(await r.text())

                for name, drive, module in clients:
                    for number in range(1, RUNS + 1):
                        run = Run(name, number, characters=sum(len(t) for t in SENTENCES))
                        seen, called = len(records.fields), len(upstream_calls)
                        before = await scrape()
                        left = stop - time.monotonic()
                        try:
                            if left <= 0:
                                raise TimeoutError("out of time before this run")
                            await asyncio.wait_for(drive(base_url, SENTENCES, run, module), left)
                        except Exception as exc:
                            run.error = f"{type(exc).__name__}: {exc}"
                        run.store = operations_delta(before, await scrape())
                        run.results = tally(records.fields[seen:])
                        run.requests = sum(run.results.values())
                        run.upstream_calls = len(upstream_calls) - called
                        runs.append(run)
        finally:
            with contextlib.suppress(Exception):
                await proxy.cleanup()
            await upstream.cleanup()
            access.removeHandler(records)
    return runs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-seconds", type=float, default=120)
    args = parser.parse_args()
    measured = asyncio.run(main(args.max_seconds))
    print(f"\n{len(SENTENCES)} sentences ({sum(len(t) for t in SENTENCES)} characters) per run")
    print("hit/miss/set: audio_cache_operations_total get:hit / get:miss / set:stored;")
    print("silent: frames of silence only / their seconds; upstr: calls reaching the upstream")
    print(format_table(measured))
