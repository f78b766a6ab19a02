"""A small TTS server that really speaks (espeak-ng), for the quickstart, the tests and the
benchmarks: OpenAI's speech API (openai.py) and ElevenLabs' text-to-speech API
(elevenlabs.py) on one port. Deterministic: the same request gives the same bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

from aiohttp import web

from . import elevenlabs, openai
from .espeak import Espeak
from .formats import wav_file
from .responses import CHUNK_DELAY, ENGINE, SPEECH_CALLS

__all__ = ["SPEECH_CALLS", "create_demo_upstream_app", "run_demo_upstream", "wav_file"]


async def models(request: web.Request) -> web.Response:
    """Both APIs list models at ``GET /v1/models``, in different shapes: ElevenLabs' clients
    send their ``xi-api-key`` header, OpenAI's do not."""
    if "xi-api-key" in request.headers:
        return await elevenlabs.models(request)
    return await openai.models(request)


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
    app.router.add_post("/v1/audio/speech", openai.speech)
    app.router.add_post("/v1/text-to-speech/{voice_id}", elevenlabs.text_to_speech)
    app.router.add_post("/v1/text-to-speech/{voice_id}/stream", elevenlabs.text_to_speech_stream)
    app.router.add_get("/v1/voices", elevenlabs.voices)
    app.router.add_get("/v2/voices", elevenlabs.voices_v2)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    return app


def run_demo_upstream(host: str, port: int) -> None:
    """Serve the demo upstream until interrupted."""
    print(f"demo upstream (espeak-ng) listening on http://{host}:{port}", flush=True)
    web.run_app(create_demo_upstream_app(), host=host, port=port, print=None)
