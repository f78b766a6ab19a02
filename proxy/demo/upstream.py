"""A small OpenAI-compatible TTS server that really speaks (espeak-ng), for the quickstart,
the tests and the benchmarks. Deterministic: the same request gives the same bytes.

``POST /v1/audio/speech`` takes OpenAI's body (``input``, ``voice`` = an espeak-ng voice
name, ``model``, ``response_format`` wav|pcm, ``speed`` 0.25-4.0, ``instructions``).
PCM is espeak's native 22050 Hz 16-bit mono (OpenAI's is 24 kHz): ``X-Sample-Rate`` says so.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from .espeak import Espeak, UnknownVoice

SPEECH_CALLS = web.AppKey("speech_calls", Counter[str])
ENGINE = web.AppKey("engine", Espeak)
CHUNK_DELAY = web.AppKey("chunk_delay", float)
CHUNK_BYTES = 16 * 1024
MAX_INPUT = 4096
FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm"}


def wav_file(pcm: bytes, sample_rate: int) -> bytes:
    """A RIFF/WAVE file around 16-bit mono PCM."""
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1,
        sample_rate, sample_rate * 2, 2, 16, b"data", len(pcm),
    )  # fmt: skip
    return header + pcm


def _error(message: str, param: str | None, status: int = 400) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param}}
    return web.json_response(body, status=status)


def _parse(body: Any) -> tuple[str, str, str, float] | web.Response:
    """(text, voice, format, speed) from an OpenAI speech body, or a 400 answer."""
    if not isinstance(body, dict):
        return _error("the body must be a JSON object", None)
    text, voice, model = body.get("input"), body.get("voice"), body.get("model")
    if not isinstance(text, str) or not text.strip():
        return _error("'input' must be a non-empty string", "input")
    if len(text) > MAX_INPUT:
        return _error(f"'input' is longer than {MAX_INPUT} characters", "input")
    if not isinstance(voice, str) or not voice:
        return _error("'voice' must be an espeak-ng voice name, e.g. 'en' or 'es'", "voice")
    if not isinstance(model, str) or not model:
        return _error("'model' is required, e.g. 'tts-1'", "model")
    fmt = body.get("response_format", "mp3")
    if fmt not in FORMATS:
        return _error(
            f"response_format {fmt!r}: this demo speaks {sorted(FORMATS)}", "response_format"
        )
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
        return _error("'speed' must be a number from 0.25 to 4.0", "speed")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        return _error("'instructions' must be a string", "instructions")
    return text, voice, fmt, float(speed)


async def speech(request: web.Request) -> web.StreamResponse:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _error("the body is not valid JSON", None)
    parsed = _parse(body)
    if isinstance(parsed, web.Response):
        return parsed
    text, voice, fmt, speed = parsed
    engine = request.app[ENGINE]
    try:
        pcm = await engine.synthesize(text, voice, speed)
    except UnknownVoice as exc:
        return _error(str(exc), "voice")
    request.app[SPEECH_CALLS]["speech"] += 1
    audio = wav_file(pcm, engine.sample_rate) if fmt == "wav" else pcm
    response = web.StreamResponse(
        headers={"Content-Type": FORMATS[fmt], "X-Sample-Rate": str(engine.sample_rate)}
    )
    response.content_length = len(audio)
    await response.prepare(request)
    delay = request.app[CHUNK_DELAY]
    for i in range(0, len(audio), CHUNK_BYTES):
        if delay and i:
            await asyncio.sleep(delay)
        await response.write(audio[i : i + CHUNK_BYTES])
    await response.write_eof()
    return response


async def models(request: web.Request) -> web.Response:
    return web.json_response(
        {"object": "list", "data": [{"id": "tts-1", "object": "model", "owned_by": "espeak-ng"}]}
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _engine(app: web.Application) -> AsyncIterator[None]:
    app[ENGINE] = Espeak()
    yield
    app[ENGINE].close()


def create_demo_upstream_app(*, chunk_delay: float = 0.0) -> web.Application:
    """The demo TTS server; ``chunk_delay`` seconds between 16 KiB chunks simulates slowness."""
    app = web.Application()
    app[SPEECH_CALLS] = Counter()
    app[CHUNK_DELAY] = chunk_delay
    app.cleanup_ctx.append(_engine)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    return app


def run_demo_upstream(host: str, port: int) -> None:
    """Serve the demo upstream until interrupted."""
    print(f"demo upstream (espeak-ng) listening on http://{host}:{port}", flush=True)
    web.run_app(create_demo_upstream_app(), host=host, port=port, print=None)
