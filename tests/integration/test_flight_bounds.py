"""What a cross-replica fill copies into Redis: a stored answer once into the leader's
stream (counted as ``stream_bytes``), an answer too large to store not at all (followers on
other replicas then call the upstream themselves)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.app import PROCESSOR, SERVICE
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


async def held_in_stats(client: Any) -> int:
    response = await client.get("/admin/audio-cache/stats")
    assert response.status == 200
    block = (await response.json())["coalescing"]
    assert block["stream_bytes_written"] >= block["stream_bytes_held"]
    return int(block["stream_bytes_held"])


async def test_stats_show_the_stream_bytes_held_during_a_slow_miss_and_none_after(
    streaming: Any, make_proxy: Any
) -> None:
    upstream, url = streaming
    a, b = await pair(make_proxy, url)
    for client in (a, b):  # a finished answer's stream lingers this long for late followers
        flights = client.app[PROCESSOR].misses.flights
        flights.settings = dataclasses.replace(flights.settings, linger_seconds=0.3)
    assert await held_in_stats(a) == 0
    asking = asyncio.ensure_future(both(a, b))  # 5 chunks, 0.1 s apart; b follows a
    held = await eventually(lambda: held_in_stats(b), what="no stream bytes while in flight")
    assert 0 < held <= len(upstream.audio(TEXT))
    assert await asking == [(200, upstream.audio(TEXT))] * 2
    assert upstream.calls == 1

    # Once the stream is gone, the sweep takes its bytes off; the lifetime count stays.
    async def none_held() -> bool:
        return await held_in_stats(a) == 0

    await eventually(none_held, what="stream bytes still held")
    body = await (await a.get("/admin/audio-cache/stats")).json()
    assert body["coalescing"]["stream_bytes_written"] == len(upstream.audio(TEXT))
