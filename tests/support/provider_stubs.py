"""Loopback stubs of the Google, Azure, Deepgram, Cartesia, Polly and ElevenLabs
(with-timestamps) TTS endpoints, answering in each provider's documented shape.

Each answer's audio is a function of the whole request (body, query and the headers that
pick the format), so a wrong hit would show as wrong bytes. ``mode`` makes the stub
misbehave the way real upstreams do: a 200 JSON answer without audio, or with bad base64.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from typing import Any

from aiohttp import web

# Container starts by media type: enough for the proxy's sniffing, plus request-made bytes.
_STARTS = {
    "audio/wav": lambda n: b"RIFF" + n.to_bytes(4, "little") + b"WAVEfmt ",
    "audio/x-wav": lambda n: b"RIFF" + n.to_bytes(4, "little") + b"WAVEfmt ",
    "audio/mpeg": lambda n: b"ID3\x04\x00\x00\x00\x00\x00\x00",
    "audio/ogg": lambda n: b"OggS\x00\x02",
}


def audio_for(media_type: str, *parts: Any) -> bytes:
    """Deterministic audio-looking bytes of ``media_type`` for a request's parts."""
    seed = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    body = (seed * 64)[:2000]
    start = _STARTS.get(media_type)
    # Raw samples: anything but a document's start (0x80 | ...) keeps them from looking like one.
    return start(len(body)) + body if start else bytes([0x80 | b for b in body[:1]]) + body


_GOOGLE_TYPES = {
    "LINEAR16": "audio/wav",
    "MP3": "audio/mpeg",
    "OGG_OPUS": "audio/ogg",
    "MULAW": "audio/mulaw",
    "ALAW": "audio/alaw",
}
_ELEVEN_TYPES = {"mp3": "audio/mpeg", "pcm": "audio/pcm", "ulaw": "audio/mulaw"}


def _azure_type(output_format: str) -> str:
    if output_format.startswith("riff-"):
        return "audio/x-wav"
    if output_format.endswith("mp3"):
        return "audio/mpeg"
    if output_format.startswith(("ogg-", "webm-")):
        return "audio/ogg"
    return "audio/basic"


class ProviderStubs:
    """One loopback server for every provider's route; counts calls per route."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.mode = "ok"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/text:synthesize", self.google)
        app.router.add_post("/v1beta1/text:synthesize", self.google)
        app.router.add_post("/v1/text-to-speech/{voice_id}/with-timestamps", self.timestamps)
        app.router.add_post("/cognitiveservices/v1", self.azure)
        app.router.add_post("/v1/speak", self.deepgram)
        app.router.add_post("/tts/bytes", self.cartesia)
        app.router.add_post("/v1/speech", self.polly)
        return app

    def _seen(self, route: str, request: web.Request, body: Any) -> None:
        self.calls[route] += 1
        self.requests.append(
            {"route": route, "headers": dict(request.headers), "query": request.query_string,
             "body": body}
        )  # fmt: skip

    def _json_audio(
        self, document: dict[str, Any], field: str, vary: tuple[str, ...] = ()
    ) -> web.Response:
        if self.mode == "error-json":
            return web.json_response({"error": {"code": 429, "message": "quota"}})
        if self.mode == "bad-base64":
            document[field] = "not base64!"
        elif self.mode == "wrong-type":
            document[field] = base64.b64encode(b'{"error": "upstream"}').decode()
        # Not aiohttp's json_response: the stub picks its own spacing, which a proxy that
        # re-serialized the answer would not reproduce.
        text = json.dumps(document, indent=2)
        response = web.Response(text=text, content_type="application/json")
        for name in vary:
            response.headers.add("Vary", name)
        return response

    async def google(self, request: web.Request) -> web.Response:
        body = await request.json()
        beta = request.path.startswith("/v1beta1")
        self._seen("google-beta" if beta else "google", request, body)
        encoding = body.get("audioConfig", {}).get("audioEncoding", "")
        if encoding not in _GOOGLE_TYPES:
            error = {
                "error": {"code": 400, "message": "audioEncoding", "status": "INVALID_ARGUMENT"}
            }
            return web.json_response(error, status=400)
        # "mp3-always": an upstream that ignores the requested encoding.
        media = "audio/mpeg" if self.mode == "mp3-always" else _GOOGLE_TYPES[encoding]
        audio = audio_for(media, body)
        document: dict[str, Any] = {"audioContent": base64.b64encode(audio).decode()}
        if beta:
            document["timepoints"] = []
            document["audioConfig"] = body["audioConfig"]
        # As Google's API front ends answer, for CORS.
        return self._json_audio(document, "audioContent", vary=("Origin", "X-Origin", "Referer"))

    async def timestamps(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._seen("elevenlabs-timestamps", request, body)
        fmt = request.query.get("output_format", "mp3_44100_128")
        audio = audio_for(
            _ELEVEN_TYPES[fmt.split("_")[0]], body, request.match_info["voice_id"], fmt
        )
        chars = list(body["text"])
        alignment = {
            "characters": chars,
            "character_start_times_seconds": [i * 0.05 for i in range(len(chars))],
            "character_end_times_seconds": [(i + 1) * 0.05 for i in range(len(chars))],
        }
        document = {
            "audio_base64": base64.b64encode(audio).decode(),
            "alignment": alignment,
            "normalized_alignment": alignment,
        }
        return self._json_audio(document, "audio_base64")

    async def azure(self, request: web.Request) -> web.Response:
        ssml = await request.text()
        self._seen("azure", request, ssml)
        if request.content_type != "application/ssml+xml" or "<speak" not in ssml:
            return web.Response(status=400)
        output = request.headers.get("X-Microsoft-OutputFormat", "riff-24khz-16bit-mono-pcm")
        media = _azure_type(output)
        return web.Response(body=audio_for(media, ssml, output), content_type=media)

    async def deepgram(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._seen("deepgram", request, body)
        if not request.headers.get("Authorization", "").startswith("Token "):
            return web.json_response({"err_code": "INVALID_AUTH"}, status=401)
        encoding = request.query.get("encoding", "mp3")
        container = request.query.get("container", "wav" if encoding == "linear16" else "none")
        media = {"mp3": "audio/mpeg", "opus": "audio/ogg"}.get(encoding, "audio/wav")
        if encoding in ("linear16", "mulaw", "alaw") and container == "none":
            media = "audio/l16" if encoding == "linear16" else f"audio/{encoding}"
        audio = audio_for(media, body, request.query_string)
        return web.Response(body=audio, content_type=media)

    async def cartesia(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._seen("cartesia", request, body)
        if not request.headers.get("X-API-Key") or not request.headers.get("Cartesia-Version"):
            return web.json_response({"error": "missing X-API-Key or Cartesia-Version"}, status=401)
        container = body.get("output_format", {}).get("container", "raw")
        media = {"wav": "audio/wav", "mp3": "audio/mpeg"}.get(container, "application/octet-stream")
        audio = audio_for(media, body, request.headers["Cartesia-Version"])
        return web.Response(body=audio, content_type=media)

    async def polly(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._seen("polly", request, body)
        output = body.get("OutputFormat")
        if output == "json":
            marks = json.dumps({"time": 0, "type": "word", "start": 0, "end": 3, "value": "Hi"})
            return web.Response(text=marks + "\n", content_type="application/x-json-stream")
        media = {"mp3": "audio/mpeg", "ogg_vorbis": "audio/ogg", "pcm": "audio/pcm"}.get(
            output or ""
        )
        if media is None:
            return web.json_response({"message": "OutputFormat"}, status=400)
        return web.Response(body=audio_for(media, body), content_type=media)
