"""A loopback TTS upstream that streams audio in timed chunks and can fail on purpose."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from .servers import served


def audio_for(text: str, size: int) -> bytes:
    """Deterministic, text-specific audio-looking bytes of ``size`` bytes."""
    seed = hashlib.sha256(text.encode()).digest()
    body = b"WAVE" + (seed * (size // len(seed) + 1))[: max(size - 12, 0)]
    return b"RIFF" + len(body).to_bytes(4, "little") + body


@dataclass
class StreamingUpstream:
    """OpenAI-style ``POST /v1/audio/speech`` answered in ``chunks`` chunks, ``delay`` apart.

    ``mode``: ``ok``; ``fail`` (cut the connection after half the chunks); ``hang`` (send the
    headers, then nothing until ``release`` is set); ``hang_head`` (no headers until then);
    ``error`` (a 500 JSON answer).
    """

    chunks: int = 5
    chunk_size: int = 2000
    delay: float = 0.05
    head_delay: float = 0.0
    mode: str = "ok"
    chunked: bool = True
    calls: int = 0
    aborted: int = 0  # answers the client (the proxy) hung up on
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    first_byte_at: list[float] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def audio(self, text: str) -> bytes:
        return audio_for(text, self.chunks * self.chunk_size)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/audio/speech", self.speech)
        return app

    async def speech(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls += 1
        self.seen_headers.append(dict(request.headers))
        loop = asyncio.get_running_loop()
        audio = self.audio(body["input"])
        await asyncio.sleep(self.head_delay)
        if self.mode == "error":
            return web.json_response({"error": {"message": "synthesis failed"}}, status=500)
        if self.mode == "hang_head":
            await self.release.wait()
        response = web.StreamResponse(headers={"Content-Type": "audio/wav", "X-Audio-Voice": "es"})
        if self.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(audio)
        await response.prepare(request)
        try:
            for i in range(self.chunks):
                if self.mode == "hang" and i == 1:
                    await self.release.wait()
                if self.mode == "fail" and i == self.chunks // 2:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                await response.write(audio[i * self.chunk_size : (i + 1) * self.chunk_size])
                if i == 0:
                    self.first_byte_at.append(loop.time())
                if i < self.chunks - 1:
                    await asyncio.sleep(self.delay)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.aborted += 1
            raise
        self.finished_at.append(loop.time())
        return response


@asynccontextmanager
async def serve(upstream: StreamingUpstream) -> AsyncIterator[str]:
    """Run ``upstream`` on 127.0.0.1; yields its base URL."""
    async with served(upstream.app()) as url:
        yield url
