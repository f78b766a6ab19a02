"""What both demo APIs share: the app's state and the sending of an answer in chunks."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable

from aiohttp import web

from .espeak import Espeak
from .formats import AudioFormat

SPEECH_CALLS = web.AppKey("speech_calls", Counter[str])
ENGINE = web.AppKey("engine", Espeak)
CHUNK_DELAY = web.AppKey("chunk_delay", float)
CHUNK_BYTES = 16 * 1024


def chunks(data: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    """``data`` in pieces of ``size`` bytes (the last one shorter)."""
    return [data[i : i + size] for i in range(0, len(data), size)]


async def send_chunks(
    request: web.Request,
    pieces: Iterable[bytes],
    headers: dict[str, str],
    *,
    length: int | None,
) -> web.StreamResponse:
    """A 200 answer written piece by piece, ``CHUNK_DELAY`` seconds apart (to simulate a
    slow upstream); with ``length`` it carries a Content-Length, else it is chunked."""
    response = web.StreamResponse(headers=headers)
    if length is None:
        response.enable_chunked_encoding()
    else:
        response.content_length = length
    await response.prepare(request)
    delay = request.app[CHUNK_DELAY]
    for i, piece in enumerate(pieces):
        if delay and i:
            await asyncio.sleep(delay)
        await response.write(piece)
    await response.write_eof()
    return response


async def send_audio(
    request: web.Request, audio: bytes, fmt: AudioFormat, *, chunked: bool = False
) -> web.StreamResponse:
    """Encoded audio with its type and rate (``X-Sample-Rate``, as pcm has no header)."""
    headers = {"Content-Type": fmt.content_type, "X-Sample-Rate": str(fmt.sample_rate)}
    return await send_chunks(
        request, chunks(audio), headers, length=None if chunked else len(audio)
    )
