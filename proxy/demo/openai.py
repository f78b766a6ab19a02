"""OpenAI's speech API on espeak-ng: ``POST /v1/audio/speech`` and ``GET /v1/models``.

Takes OpenAI's body: ``input`` (at most 4096 characters), ``model`` (tts-1, tts-1-hd,
gpt-4o-mini-tts or a dated gpt-4o-mini-tts snapshot), ``voice`` (OpenAI's names, an
espeak-ng voice name, or ``{"id": name}``), ``response_format`` (mp3 by default, opus, aac,
flac, wav, pcm: all 24 kHz 16-bit mono, as OpenAI's), ``speed`` 0.25-4.0, ``instructions``
(accepted and ignored: espeak-ng cannot act) and ``stream_format`` (``audio``, or ``sse``
with gpt-4o-mini-tts as OpenAI allows). Bad input gets OpenAI's 400 error shape naming the
``param``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .espeak import SAMPLE_RATE, UnknownVoice
from .formats import AudioFormat, encode
from .responses import ENGINE, SPEECH_CALLS, send_audio, send_chunks
from .voices import OPENAI_VOICES, openai_voice

MAX_INPUT = 4096
RATE = 24_000
FORMATS: dict[str, AudioFormat] = {
    "mp3": AudioFormat("mp3", RATE, 64_000),
    "opus": AudioFormat("opus", RATE, 32_000),
    "aac": AudioFormat("aac", RATE, 64_000),
    "flac": AudioFormat("flac", RATE),
    "wav": AudioFormat("wav", RATE),
    "pcm": AudioFormat("pcm", RATE),
}
MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
_SNAPSHOTS = "gpt-4o-mini-tts-"  # dated snapshots, e.g. gpt-4o-mini-tts-2025-12-15
SSE_CHUNK_BYTES = 8 * 1024
_VOICE_HINT = (
    f"one of OpenAI's voices ({', '.join(OPENAI_VOICES)}) "
    "or an espeak-ng voice name such as en, es, fr or en-us+f3"
)


@dataclass(frozen=True)
class SpeechRequest:
    """A valid OpenAI speech body."""

    text: str
    voice: str
    model: str
    fmt: AudioFormat
    speed: float
    sse: bool


def error(message: str, param: str | None, status: int = 400) -> web.Response:
    """OpenAI's error answer."""
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
    }
    return web.json_response(body, status=status)


def _voice_name(voice: Any) -> str | None:
    if isinstance(voice, dict):
        voice = voice.get("id")
    return voice if isinstance(voice, str) and voice else None


def parse_speech(body: Any) -> SpeechRequest | web.Response:
    """The request in an OpenAI speech body, or the 400 answer that names what is wrong."""
    if not isinstance(body, dict):
        return error("the body must be a JSON object", None)
    text, model = body.get("input"), body.get("model")
    if not isinstance(text, str) or not text.strip():
        return error("'input' must be a non-empty string", "input")
    if len(text) > MAX_INPUT:
        return error(f"'input' is longer than {MAX_INPUT} characters", "input")
    if not isinstance(model, str) or not model:
        return error("'model' is required, e.g. 'tts-1'", "model")
    if model not in MODELS and not model.startswith(_SNAPSHOTS):
        return error(f"model {model!r}: this demo speaks {', '.join(MODELS)}", "model")
    voice = _voice_name(body.get("voice"))
    if voice is None:
        return error(f"'voice' must be {_VOICE_HINT}", "voice")
    fmt = body.get("response_format", "mp3")
    if not isinstance(fmt, str) or fmt not in FORMATS:
        return error(
            f"response_format {fmt!r}: supported are {', '.join(FORMATS)}", "response_format"
        )
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
        return error("'speed' must be a number from 0.25 to 4.0", "speed")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        return error("'instructions' must be a string", "instructions")
    stream_format = body.get("stream_format", "audio")
    if stream_format not in ("audio", "sse"):
        return error("'stream_format' must be 'audio' or 'sse'", "stream_format")
    if stream_format == "sse" and model in ("tts-1", "tts-1-hd"):
        return error(f"stream_format 'sse' is not supported for {model}", "stream_format")
    return SpeechRequest(text, voice, model, FORMATS[fmt], float(speed), stream_format == "sse")


def usage(text: str, pcm_bytes: int) -> dict[str, int]:
    """The demo's token counts: one input token per 4 characters, one output token per
    20 ms of speech (OpenAI's tokenizers are not published for audio)."""
    input_tokens = max(1, math.ceil(len(text) / 4))
    output_tokens = math.ceil(pcm_bytes / 2 / SAMPLE_RATE * 50)
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def sse_events(audio: bytes, counts: dict[str, int]) -> Iterator[bytes]:
    """OpenAI's speech events: ``speech.audio.delta`` with base64 pieces of the audio file,
    then ``speech.audio.done`` with the usage (the shapes of OpenAI's API reference)."""
    for i in range(0, len(audio), SSE_CHUNK_BYTES):
        piece = base64.b64encode(audio[i : i + SSE_CHUNK_BYTES]).decode()
        yield _event({"type": "speech.audio.delta", "audio": piece})
    yield _event({"type": "speech.audio.done", "usage": counts})


async def speech(request: web.Request) -> web.StreamResponse:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return error("the body is not valid JSON", None)
    parsed = parse_speech(body)
    if isinstance(parsed, web.Response):
        return parsed
    engine = request.app[ENGINE]
    try:
        pcm = await engine.synthesize(parsed.text, openai_voice(parsed.voice), parsed.speed)
    except UnknownVoice:
        return error(f"voice {parsed.voice!r} is unknown: use {_VOICE_HINT}", "voice")
    audio = await asyncio.to_thread(encode, pcm, engine.sample_rate, parsed.fmt)
    request.app[SPEECH_CALLS]["speech"] += 1
    if parsed.sse:
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        events = sse_events(audio, usage(parsed.text, len(pcm)))
        return await send_chunks(request, events, headers, length=None)
    return await send_audio(request, audio, parsed.fmt)


async def models(request: web.Request) -> web.Response:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "espeak-ng"} for m in MODELS]
    return web.json_response({"object": "list", "data": data})
