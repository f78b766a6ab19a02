"""What a cross-replica fill copies into Redis: a stored answer once into the leader's
stream (counted as ``stream_bytes``), an answer too large to store not at all (followers on
other replicas then call the upstream themselves)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.app import SERVICE
from tests.support.speech import speech_body
from tests.support.streaming_upstream import StreamingUpstream, serve
from tests.support.waits import eventually

TEXT = "Checkout is at noon"
SPEECH = speech_body(TEXT)


@pytest.fixture
async def streaming() -> AsyncIterator[tuple[StreamingUpstream, str]]:
    upstream = StreamingUpstream(chunks=5, chunk_size=4000, delay=0.1, chunked=False)
    async with serve(upstream) as url:
        yield upstream, url


async def pair(make_proxy: Any, url: str, **settings: Any) -> tuple[Any, Any]:
    prefix = f"b{uuid.uuid4().hex[:10]}"
    settings.setdefault("client_auth", "none")
    return (
        await make_proxy(url, prefix=prefix, **settings),
        await make_proxy(url, prefix=prefix, **settings),
    )


async def both(a: Any, b: Any) -> list[tuple[int, bytes]]:
    async def one(client: Any, delay: float) -> tuple[int, bytes]:
        await asyncio.sleep(delay)  # the second joins while the first is being made
        response = await client.post("/v1/audio/speech", json=SPEECH)
        return response.status, await response.read()

    return list(await asyncio.gather(one(a, 0), one(b, 0.15)))


async def stream_bytes(client: Any) -> int:
    return (await client.app[SERVICE].totals())["stream_bytes"]


async def test_an_answer_too_large_to_store_is_not_copied_into_redis(
    streaming: Any, make_proxy: Any
) -> None:
    upstream, url = streaming
    # 20 000 bytes of audio against a 10 KB entry limit, with a Content-Length.
    a, b = await pair(make_proxy, url, audio_cache_max_entry_size_mb=10 / 1024)
    results = await both(a, b)
    assert results == [(200, upstream.audio(TEXT))] * 2
    assert upstream.calls == 2  # the follower called the upstream itself
    assert await stream_bytes(a) == 0


async def test_a_stored_answer_goes_through_the_stream_once_and_is_counted(
    streaming: Any, make_proxy: Any
) -> None:
    upstream, url = streaming
    a, b = await pair(make_proxy, url)
    results = await both(a, b)
    assert results == [(200, upstream.audio(TEXT))] * 2
    assert upstream.calls == 1
    await eventually(lambda: stream_bytes(a))
    assert await stream_bytes(a) == len(upstream.audio(TEXT))


async def test_a_miss_nobody_follows_writes_its_audio_to_redis_once(
    streaming: Any, make_proxy: Any
) -> None:
    upstream, url = streaming
    a, b = await pair(make_proxy, url)
    response = await a.post("/v1/audio/speech", json=SPEECH)
    assert await response.read() == upstream.audio(TEXT)
    again = await b.post("/v1/audio/speech", json=SPEECH)  # read-your-writes, elsewhere
    assert await again.read() == upstream.audio(TEXT)
    assert again.headers["X-Cache"] == "HIT"
    assert upstream.calls == 1
    assert await stream_bytes(a) == 0  # only the entry holds the audio
