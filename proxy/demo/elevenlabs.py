"""ElevenLabs' text-to-speech API on espeak-ng.

``POST /v1/text-to-speech/{voice_id}`` (Content-Length) and ``…/{voice_id}/stream``
(chunked) take ElevenLabs' body (``text``; ``model_id``, ``language_code``,
``voice_settings`` with ``speed`` 0.7-1.2 honoured, the rest accepted and ignored) and the
``output_format`` query (``codec_rate[_kbps]``, mp3_44100_128 by default: every format the
ElevenLabs SDK lists). Any ``voice_id`` speaks (see voices.elevenlabs_voice).
``GET /v1/voices``, ``GET /v2/voices`` and ``GET /v1/models`` list the demo's voices and
models. Bad input gets a 422 whose ``detail`` names the field, as ElevenLabs' API does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from .espeak import UnknownVoice
from .formats import AudioFormat, Codec
from .formats import encode as encode_audio
from .responses import ENGINE, SPEECH_CALLS, send_audio
from .voices import OPENAI_VOICES, elevenlabs_voice

MAX_TEXT = 10_000
DEFAULT_FORMAT = "mp3_44100_128"
_CODECS: dict[str, Codec] = {
    "mp3": "mp3", "opus": "opus", "pcm": "pcm", "wav": "wav", "ulaw": "ulaw", "alaw": "alaw",
}  # fmt: skip
# The ElevenLabs SDK's list for text-to-speech (TextToSpeechConvertRequestOutputFormat).
_FORMAT_NAMES = (
    "mp3_22050_32", "mp3_24000_48", "mp3_44100_32", "mp3_44100_64", "mp3_44100_96",
    "mp3_44100_128", "mp3_44100_192",
    "opus_48000_32", "opus_48000_64", "opus_48000_96", "opus_48000_128", "opus_48000_192",
    "pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_32000", "pcm_44100", "pcm_48000",
    "wav_8000", "wav_16000", "wav_22050", "wav_24000", "wav_32000", "wav_44100", "wav_48000",
    "ulaw_8000", "alaw_8000",
)  # fmt: skip
MODELS = ("eleven_multilingual_v2", "eleven_flash_v2_5", "eleven_turbo_v2_5", "eleven_v3")


def _format(name: str) -> AudioFormat:
    codec, rate, *kbps = name.split("_")
    return AudioFormat(_CODECS[codec], int(rate), int(kbps[0]) * 1000 if kbps else 0)


FORMATS: dict[str, AudioFormat] = {name: _format(name) for name in _FORMAT_NAMES}


def error(where: str, field: str, message: str, value: Any = None) -> web.Response:
    """ElevenLabs' (FastAPI's) validation answer: 422 with the field's location."""
    detail = [{"type": "value_error", "loc": [where, field], "msg": message, "input": value}]
    return web.json_response({"detail": detail}, status=422)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse(body: Any, query: Any) -> tuple[str, str | None, float, AudioFormat] | web.Response:
    """(text, language_code, speed, format), or the 422 answer naming the bad field."""
    output_format = query.get("output_format", DEFAULT_FORMAT)
    if output_format not in FORMATS:
        known = ", ".join(_FORMAT_NAMES)
        return error("query", "output_format", f"must be one of {known}", output_format)
    if not isinstance(body, dict):
        return error("body", "text", "the body must be a JSON object with 'text'")
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        return error("body", "text", "must be a non-empty string", text)
    if len(text) > MAX_TEXT:
        return error("body", "text", f"is longer than {MAX_TEXT} characters")
    for field in ("model_id", "language_code"):
        if body.get(field) is not None and not isinstance(body[field], str):
            return error("body", field, "must be a string", body[field])
    settings = body.get("voice_settings")
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        return error("body", "voice_settings", "must be an object", settings)
    speed = settings.get("speed")
    if speed is None:
        speed = 1.0
    if not _number(speed) or not 0.7 <= speed <= 1.2:
        return error("body", "voice_settings.speed", "must be a number from 0.7 to 1.2", speed)
    return text, body.get("language_code"), float(speed), FORMATS[output_format]


async def _speak(request: web.Request, *, chunked: bool) -> web.StreamResponse:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return error("body", "text", "the body is not valid JSON")
    parsed = _parse(body, request.query)
    if isinstance(parsed, web.Response):
        return parsed
    text, language_code, speed, fmt = parsed
    engine = request.app[ENGINE]
    voice = elevenlabs_voice(request.match_info["voice_id"], language_code)
    try:
        pcm = await engine.synthesize(text, voice, speed)
    except UnknownVoice:  # a name espeak-ng's data folder lists but espeak-ng cannot load
        if language_code:
            return error("body", "language_code", "espeak-ng cannot speak it", language_code)
        return error("path", "voice_id", "espeak-ng cannot speak it", voice)
    audio = await asyncio.to_thread(encode_audio, pcm, engine.sample_rate, fmt)
    request.app[SPEECH_CALLS]["speech"] += 1
    return await send_audio(request, audio, fmt, chunked=chunked)


async def text_to_speech(request: web.Request) -> web.StreamResponse:
    return await _speak(request, chunked=False)


async def text_to_speech_stream(request: web.Request) -> web.StreamResponse:
    return await _speak(request, chunked=True)


def _voice(name: str) -> dict[str, Any]:
    espeak = OPENAI_VOICES[name]
    language, _, variant = espeak.partition("+")
    gender = {"f": "female", "m": "male"}.get(variant[:1], "neutral")
    return {
        "voice_id": name,
        "name": name.capitalize(),
        "category": "premade",
        "labels": {"language": language, "gender": gender},
        "description": f"espeak-ng voice {espeak}",
    }


async def voices(request: web.Request) -> web.Response:
    return web.json_response({"voices": [_voice(name) for name in OPENAI_VOICES]})


async def voices_v2(request: web.Request) -> web.Response:
    listed = [_voice(name) for name in OPENAI_VOICES]
    return web.json_response(
        {"voices": listed, "has_more": False, "total_count": len(listed), "next_page_token": None}
    )


async def models(request: web.Request) -> web.Response:
    return web.json_response(
        [
            {
                "model_id": model,
                "name": model,
                "can_do_text_to_speech": True,
                "description": "espeak-ng, whatever the name",
            }
            for model in MODELS
        ]
    )
