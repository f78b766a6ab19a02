"""A miss's first bytes go to its client before the work only followers and the store need
(the stream's head record, the credential renewal, the store), and that work still starts
once they are out, not at the end of the body (real Valkey, loopback upstream)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from proxy.app import PROCESSOR, REDIS
from proxy.core.keys import CacheKey
from proxy.request.coalescing import FlightKeys
from proxy.request.fill import AFTER_FIRST_BYTES_SECONDS, Fill
from proxy.store.service import Keyspace
from tests.support.loopback_upstream import fake_wav
from tests.support.proxies import service_of
from tests.support.servers import served
from tests.support.speech import speech_body
from tests.support.streaming_upstream import StreamingUpstream, serve
from tests.support.waits import eventually


@pytest.fixture
async def holding() -> AsyncIterator[tuple[StreamingUpstream, str]]:
    """An upstream that sends its head and first chunk, then holds until released."""
    upstream = StreamingUpstream(chunks=4, chunk_size=3000, delay=0.01, mode="hang")
    async with serve(upstream) as url:
        try:
            yield upstream, url
        finally:
            upstream.release.set()


def key_of(client: Any, speech: dict[str, Any]) -> CacheKey:
    processor = client.app[PROCESSOR]
    rule = next(r for r in processor.rules if r.name == "openai")
    described = rule.describe(
        path_params={}, query="", headers={}, body=json.dumps(speech).encode()
    )
    return processor.key_for(described)  # type: ignore[no-any-return]


async def test_a_fill_is_past_its_first_bytes_a_moment_after_the_first_chunk() -> None:
    loop = asyncio.get_running_loop()
    fill = Fill("k")
    waiting = asyncio.ensure_future(fill.past_first_bytes())
    await fill.set_head(200, [])
    await asyncio.sleep(AFTER_FIRST_BYTES_SECONDS * 5)
    assert not waiting.done()  # a head is not the first bytes
    await fill.add(b"")
    await asyncio.sleep(AFTER_FIRST_BYTES_SECONDS * 5)
    assert not waiting.done()  # nor is an empty chunk
    added = loop.time()
    await fill.add(b"audio")
    await asyncio.wait_for(waiting, 2.0)
    assert loop.time() - added >= AFTER_FIRST_BYTES_SECONDS * 0.9
    await asyncio.wait_for(fill.past_first_bytes(), 2.0)  # and stays so


async def test_a_fill_that_ends_without_a_body_is_past_its_first_bytes() -> None:
    fill = Fill("k")
    waiting = asyncio.ensure_future(fill.past_first_bytes())
    await fill.set_head(204, [])
    await fill.finish(complete=True)
    await asyncio.wait_for(waiting, 2.0)


async def test_followers_get_the_head_once_the_first_bytes_are_out_not_at_the_end(
    holding: Any, make_proxy: Any
) -> None:
    upstream, url = holding
    speech = speech_body(f"Checkout is at noon {uuid.uuid4().hex}")
    client = await make_proxy(url, client_auth="none")
    answer = await client.post("/v1/audio/speech", json=speech)
    first = await asyncio.wait_for(answer.content.readany(), 5.0)
    assert first == upstream.audio(speech["input"])[: len(first)]
    prefix = client.app[PROCESSOR].settings.audio_cache_key_prefix
    keys = FlightKeys.of(Keyspace(prefix), key_of(client, speech))
    redis = client.app[REDIS]

    async def head_published() -> bool:
        records = await redis.xrange(keys.stream)
        return any(fields.get(b"k") == b"h" for _, fields in records)

    await eventually(head_published, 3.0, what="the head record waited for the end")
    assert not upstream.finished_at  # the upstream still holds the rest
    upstream.release.set()
    assert first + await answer.read() == upstream.audio(speech["input"])
    assert answer.headers["Cache-Status"] == "tts-cache; fwd=miss; stored"
    assert await service_of(client).fetch(key_of(client, speech)) is not None


async def test_an_accepted_credential_is_renewed_once_the_first_bytes_are_out(
    holding: Any, make_proxy: Any
) -> None:
    upstream, url = holding
    upstream.mode = "ok"
    client = await make_proxy(url, client_auth="upstream")
    auth = {"Authorization": f"Bearer sk-{uuid.uuid4().hex}"}
    first = await client.post(
        "/v1/audio/speech", json=speech_body(f"Towels {uuid.uuid4().hex}"), headers=auth
    )
    await first.read()  # the credential's first success: its verdict is kept
    redis = client.app[REDIS]
    prefix = client.app[PROCESSOR].settings.audio_cache_key_prefix
    verdicts = [k async for k in redis.scan_iter(match=f"{prefix}:cred:*")]
    assert len(verdicts) == 1
    await redis.pexpire(verdicts[0], 60_000)
    upstream.mode = "hang"
    answer = await client.post(
        "/v1/audio/speech", json=speech_body(f"Pool {uuid.uuid4().hex}"), headers=auth
    )
    assert await asyncio.wait_for(answer.content.readany(), 5.0)

    async def renewed() -> bool:
        return int(await redis.pttl(verdicts[0])) > 60_000

    await eventually(renewed, 3.0, what="the credential's renewal waited for the end")
    assert len(upstream.finished_at) == 1  # the second answer is still held
    upstream.release.set()
    await answer.read()
    assert answer.headers["Cache-Status"] == "tts-cache; fwd=miss; stored"


@pytest.mark.parametrize("status", [500, 200])
async def test_an_accepted_credential_s_empty_answer_is_not_held_for_its_renewal(
    make_proxy: Any, status: int
) -> None:
    """An answer with no body has no first bytes to wait for: its renewal starts at once,
    and its fill ends (a refused one's end waits for the renewal, as before)."""
    answers: list[int] = [200]

    async def speech(request: web.Request) -> web.Response:
        body = await request.json()
        if answers:
            answers.pop()
            return web.Response(body=fake_wav(body["input"]), content_type="audio/wav")
        return web.Response(status=status, content_type="audio/wav")

    app = web.Application()
    app.router.add_post("/v1/audio/speech", speech)
    async with served(app) as url:
        client = await make_proxy(url, client_auth="upstream")
        auth = {"Authorization": f"Bearer sk-{uuid.uuid4().hex}"}
        first = await client.post(
            "/v1/audio/speech", json=speech_body(f"Spa {uuid.uuid4().hex}"), headers=auth
        )
        assert first.status == 200 and await first.read()
        empty = await client.post(
            "/v1/audio/speech", json=speech_body(f"Gym {uuid.uuid4().hex}"), headers=auth
        )
        assert empty.status == status
        assert await asyncio.wait_for(empty.read(), 5.0) == b""
        fills = client.app[PROCESSOR].fills

        async def ended() -> bool:
            return fills.in_flight == 0

        await eventually(ended, 5.0, what="the fill of an empty answer never ended")
