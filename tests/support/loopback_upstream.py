"""A loopback TTS upstream for the OpenAI, ElevenLabs, MaryTTS and Coqui routes, and the
audio it answers with."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web


def fake_wav(text: str, voice: str = "", extra: str = "") -> bytes:
    """Deterministic audio-looking bytes for a request: a RIFF header and a body."""
    seed = f"{text}|{voice}|{extra}".encode()
    body = (seed * (4000 // max(len(seed), 1) + 1))[:4000]
    return b"RIFF" + len(body).to_bytes(4, "little") + b"WAVEfmt " + body


class LoopbackUpstream:
    """A loopback TTS upstream that counts calls and can be told to misbehave."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.mode = "ok"
        self.extra_headers: dict[str, str] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/audio/speech", self.openai)
        app.router.add_post("/v1/text-to-speech/{voice_id}", self.elevenlabs)
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self.elevenlabs)
        app.router.add_get("/process", self.marytts)
        app.router.add_post("/process", self.marytts)
        app.router.add_get("/api/tts", self.coqui)
        app.router.add_route("*", "/other/{tail:.*}", self.other)
        return app

    async def _audio(self, request: web.Request, audio: bytes, route: str) -> web.StreamResponse:
        self.calls[route] += 1
        self.requests.append({"route": route, "headers": dict(request.headers)})
        mode = self.mode
        if mode == "error":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if mode == "html":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if mode == "empty":
            return web.Response(body=b"", content_type="audio/wav")
        if mode == "no-store":
            return web.Response(
                body=audio, content_type="audio/wav", headers={"Cache-Control": "no-store"}
            )
        if mode == "truncate":
            response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
            response.content_length = len(audio)
            await response.prepare(request)
            await response.write(audio[: len(audio) // 2])
            assert request.transport is not None
            request.transport.close()
            return response
        response = web.StreamResponse(
            headers={"Content-Type": "audio/wav", "X-Sample-Rate": "22050", **self.extra_headers}
        )
        if mode == "chunked":
            response.enable_chunked_encoding()
        else:
            response.content_length = len(audio)
        await response.prepare(request)
        for i in range(0, len(audio), 1024):
            await response.write(audio[i : i + 1024])
        await response.write_eof()
        return response

    async def openai(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        extra = f"{body.get('model')}|{body.get('response_format')}|{body.get('speed')}"
        return await self._audio(request, fake_wav(body["input"], body["voice"], extra), "openai")

    async def elevenlabs(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        extra = f"{body.get('model_id')}|{request.query.get('output_format')}"
        voice = request.match_info["voice_id"]
        return await self._audio(request, fake_wav(body["text"], voice, extra), "elevenlabs")

    async def marytts(self, request: web.Request) -> web.StreamResponse:
        q = request.query if request.method == "GET" else await request.post()
        audio = fake_wav(str(q["INPUT_TEXT"]), str(q.get("VOICE", "")))
        return await self._audio(request, audio, "marytts")

    async def coqui(self, request: web.Request) -> web.StreamResponse:
        audio = fake_wav(request.query["text"], request.query.get("speaker_id", ""))
        return await self._audio(request, audio, "coqui")

    async def other(self, request: web.Request) -> web.StreamResponse:
        self.calls["other"] += 1
        body = await request.read()
        response = web.StreamResponse(
            status=201 if request.method == "PUT" else 200,
            headers={"Content-Type": "application/json", "X-Upstream": "yes"},
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"method":"' + request.method.encode() + b'",')
        await response.write(b'"path":"' + request.path.encode() + b'","query":"')
        await response.write(request.query_string.encode() + b'","len":')
        await response.write(str(len(body)).encode() + b"}")
        await response.write_eof()
        return response
