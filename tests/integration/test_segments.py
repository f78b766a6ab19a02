"""Segment caching through the real proxy and the demo upstream: pieces stored as the
requests they would have been alone, joined answers that decode, one upstream call for the
one new sentence of a templated answer."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import miniaudio
import pytest
import redis.asyncio as aioredis
import soundfile
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.core.joining import DEFAULT_PAUSE_MS
from proxy.core.outcomes import CacheStatus, Forward
from proxy.demo.upstream import SPEECH_CALLS, create_demo_upstream_app
from tests.support.proxies import service_of
from tests.support.waits import eventually, until_filled

SPEECH = "/v1/audio/speech"
FIXED_1 = "Welcome to Hotel Miramar."
FIXED_2 = "Breakfast is served from seven to ten."
TEMPLATE = "{} Your room is on the {} floor. {}"


@pytest.fixture
async def demo() -> AsyncIterator[tuple[TestServer, str]]:
    server = TestServer(create_demo_upstream_app(), host="127.0.0.1")
    await server.start_server()
    yield server, str(server.make_url("")).rstrip("/")
    await server.close()


def body(text: str, fmt: str = "wav") -> dict[str, Any]:
    return {"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt}


def calls(server: TestServer) -> int:
    return int(server.app[SPEECH_CALLS]["speech"])


async def upstream_alone(url: str, text: str, fmt: str) -> bytes:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(url + SPEECH, json=body(text, fmt)) as response,
    ):
        assert response.status == 200
        return await response.read()


def seconds(audio: bytes) -> float:
    info = soundfile.info(io.BytesIO(audio))
    return float(info.frames / info.samplerate)


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
async def test_pieces_are_the_upstreams_own_answers_and_the_join_decodes(
    demo: tuple[TestServer, str], make_proxy: Any, fmt: str
) -> None:
    server, url = demo
    client = await make_proxy(url, client_auth="none", audio_cache_segments="sentence")
    text = f"{FIXED_1} {FIXED_2} Enjoy your stay with us."
    response = await client.post(SPEECH, json=body(text, fmt))
    assert response.status == 200
    joined = await response.read()
    status = CacheStatus.parse(response.headers["Cache-Status"])
    assert status is not None and status.fwd is Forward.MISS
    assert status.detail == "pieces-3-hits-0" and response.headers["X-Cache"] == "MISS"
    assert calls(server) == 3

    pieces = [FIXED_1, FIXED_2, "Enjoy your stay with us."]
    alone = [await upstream_alone(url, p, fmt) for p in pieces]
    service = service_of(client)
    for piece, own in zip(pieces, alone, strict=True):
        # The piece's entry is the one a request with that text alone has.
        single = await client.post(SPEECH, json=body(piece, fmt))
        assert single.headers["X-Cache"] == "HIT" and await single.read() == own
        key = single.headers["X-Audio-Cache-Key"]
        cached = await eventually(lambda k=key: service.fetch(_key(k)))
        assert cached is not None and cached.audio == own
    expected = sum(seconds(a) for a in alone) + 2 * DEFAULT_PAUSE_MS / 1000
    assert seconds(joined) == pytest.approx(expected, rel=0.01)
    decoded = miniaudio.decode(joined)
    assert decoded.num_frames / decoded.sample_rate == pytest.approx(expected, rel=0.01)

    again = await client.post(SPEECH, json=body(text, fmt))
    assert await again.read() == joined
    status = CacheStatus.parse(again.headers["Cache-Status"])
    assert status is not None and status.hit and status.detail == "pieces-3-hits-3"
    assert calls(server) == 3 + 3  # the three direct upstream calls of this test


def _key(hex_key: str) -> Any:
    from proxy.core.keys import CacheKey

    key = CacheKey.parse(hex_key)
    assert key is not None
    return key


async def test_a_templated_answer_with_one_new_sentence_makes_one_upstream_call(
    demo: tuple[TestServer, str], make_proxy: Any
) -> None:
    server, url = demo
    client = await make_proxy(url, client_auth="none", audio_cache_segments="sentence")
    first = await client.post(SPEECH, json=body(TEMPLATE.format(FIXED_1, "third", FIXED_2)))
    assert first.status == 200
    await first.read()
    before = calls(server)
    text = TEMPLATE.format(FIXED_1, "fifth", FIXED_2)
    second = await client.post(SPEECH, json=body(text))
    assert second.status == 200
    audio = await second.read()
    assert calls(server) == before + 1
    status = CacheStatus.parse(second.headers["Cache-Status"])
    assert status is not None and status.detail == "pieces-3-hits-2"
    assert status.fwd is Forward.PARTIAL and second.headers["X-Cache"] == "PARTIAL"
    assert soundfile.info(io.BytesIO(audio)).frames > 0


async def test_pieces_with_figures_are_synthesized_but_not_stored(
    demo: tuple[TestServer, str], make_proxy: Any
) -> None:
    server, url = demo
    client = await make_proxy(url, client_auth="none", audio_cache_segments="sentence")
    text = f"{FIXED_1} Your room number is 214. {FIXED_2}"
    for _ in range(2):
        response = await client.post(SPEECH, json=body(text))
        assert response.status == 200
        await response.read()
        # The first answer's fills are done tidying up: the second request cannot ride on
        # the one-off piece's finished fill, it must call the upstream again.
        await until_filled(client)
    # Both fixed sentences stored on the first answer; the room number synthesized twice.
    assert calls(server) == 3 + 1
    alone = await client.post(SPEECH, json=body("Your room number is 214."))
    assert alone.headers["X-Cache"] != "HIT"


async def test_off_by_default_and_the_header_turns_it_on_or_refuses(
    demo: tuple[TestServer, str], make_proxy: Any
) -> None:
    server, url = demo
    client = await make_proxy(url, client_auth="none")
    text = f"{FIXED_1} {FIXED_2}"
    plain = await client.post(SPEECH, json=body(text))
    assert plain.headers["X-Cache"] == "MISS" and calls(server) == 1
    await plain.read()
    other = f"{FIXED_2} {FIXED_1}"
    on = await client.post(SPEECH, json=body(other), headers={"X-Audio-Cache-Segments": "sentence"})
    assert on.headers["Cache-Status"] == "tts-cache; fwd=miss; detail=pieces-2-hits-0"
    await on.read()
    bad = await client.post(SPEECH, json=body(other), headers={"X-Audio-Cache-Segments": "words"})
    assert bad.status == 400
    assert (await bad.json())["error"]["field"] == "header:X-Audio-Cache-Segments"


async def test_formats_without_a_join_are_cached_whole(
    demo: tuple[TestServer, str], make_proxy: Any
) -> None:
    server, url = demo
    client = await make_proxy(url, client_auth="none", audio_cache_segments="sentence")
    response = await client.post(SPEECH, json=body(f"{FIXED_1} {FIXED_2}", "opus"))
    assert response.status == 200 and response.headers["X-Cache"] == "MISS"
    await response.read()
    assert calls(server) == 1


class Recorded:
    """The demo upstream, recording the texts it is asked for; ``held`` cleared holds
    every speech request until it is set again."""

    def __init__(self) -> None:
        self.inputs: list[str] = []
        self.held = asyncio.Event()
        self.held.set()

    @web.middleware
    async def record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == SPEECH:
            self.inputs.append((await request.json())["input"])
            await asyncio.wait_for(self.held.wait(), 10)
        response: web.StreamResponse = await handler(request)
        return response


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[Recorded, str]]:
    upstream = Recorded()
    app = create_demo_upstream_app()
    app.middlewares.append(upstream.record)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield upstream, str(server.make_url("")).rstrip("/")
    upstream.held.set()
    await server.close()


async def entries(redis_url: str, prefix: str) -> list[bytes]:
    client = aioredis.from_url(redis_url)
    try:
        return [k async for k in client.scan_iter(match=f"{prefix}:*:e:*", count=1000)]
    finally:
        await client.aclose()


async def test_a_leading_stored_piece_goes_out_while_the_missing_one_synthesizes(
    recorded: tuple[Recorded, str], make_proxy: Any
) -> None:
    upstream, url = recorded
    client = await make_proxy(url, client_auth="none", audio_cache_segments="sentence")
    alone = await client.post(SPEECH, json=body(FIXED_1))
    assert alone.status == 200
    await alone.read()
    upstream.held.clear()  # the new sentence's synthesis waits until the first bytes arrived
    response = await client.post(SPEECH, json=body(f"{FIXED_1} A sentence nobody said before."))
    assert response.status == 200 and response.headers["X-Cache"] == "PARTIAL"
    first = await asyncio.wait_for(response.content.readany(), 5)
    assert first.startswith(b"RIFF")
    # Its synthesis started (and is held): the first bytes did not wait for it.
    await eventually(lambda: len(upstream.inputs) == 2, what="the missing piece never went up")
    assert upstream.inputs[1] == "A sentence nobody said before."
    upstream.held.set()
    rest = await response.read()
    assert soundfile.info(io.BytesIO(first + rest)).frames > 0


async def test_a_piece_is_stored_from_its_nth_miss_counted_across_replicas(
    recorded: tuple[Recorded, str], make_proxy: Any, redis_url: str
) -> None:
    upstream, url = recorded
    prefix = f"s{uuid.uuid4().hex[:10]}"
    replicas = [
        await make_proxy(
            url, prefix=prefix, client_auth="none", audio_cache_segments="sentence",
            segment_store_after_sightings=2, segment_sightings_window_seconds=600,
        )
        for _ in range(2)
    ]  # fmt: skip
    text = f"{FIXED_1} {FIXED_2}"
    first = await replicas[0].post(SPEECH, json=body(text))
    assert first.status == 200 and first.headers["X-Cache"] == "MISS"
    await first.read()
    await until_filled(*replicas)
    assert await entries(redis_url, prefix) == []  # one miss each: not stored yet
    store = aioredis.from_url(redis_url)
    try:
        counters = [k async for k in store.scan_iter(match=f"{prefix}:*:sg:*", count=1000)]
        assert len(counters) == 2
        for name in counters:
            assert await store.get(name) == b"1"
            assert 0 < await store.ttl(name) <= 600
    finally:
        await store.aclose()

    second = await replicas[1].post(SPEECH, json=body(text))  # the other replica's miss
    assert second.status == 200 and second.headers["X-Cache"] == "MISS"
    await second.read()
    assert len(await entries(redis_url, prefix)) == 2  # stored before the answer ended
    third = await replicas[0].post(SPEECH, json=body(text))
    assert third.headers["Cache-Status"] == "tts-cache; hit; detail=pieces-2-hits-2"
    await third.read()
    # Each miss sends its pieces up concurrently: their order is not the text's.
    assert sorted(upstream.inputs) == sorted([FIXED_1, FIXED_2] * 2)


async def test_runs_of_missing_pieces_are_one_call_and_their_pieces_are_rendered_apart(
    recorded: tuple[Recorded, str], make_proxy: Any
) -> None:
    upstream, url = recorded
    client = await make_proxy(
        url, client_auth="none", audio_cache_segments="sentence", segment_miss_mode="runs"
    )
    warmed = await client.post(SPEECH, json=body(FIXED_1))
    await warmed.read()
    last = "Enjoy your stay with us."
    run = f"{FIXED_2} Your room is 214. {last}"
    response = await client.post(SPEECH, json=body(f"{FIXED_1} {run}"))
    assert response.status == 200
    assert response.headers["Cache-Status"] == "tts-cache; fwd=partial; detail=pieces-4-hits-1"
    joined = await response.read()
    # The run went up as one request; its storable pieces were rendered alone for the
    # cache (the room number is one-off: not rendered).
    # (The renders may start before the run's call: the order is not asserted.)
    assert upstream.inputs[0] == FIXED_1
    assert sorted(upstream.inputs[1:]) == sorted([run, FIXED_2, last])
    fixed_alone = await upstream_alone(url, FIXED_1, "wav")
    run_alone = await upstream_alone(url, run, "wav")
    expected = seconds(fixed_alone) + DEFAULT_PAUSE_MS / 1000 + seconds(run_alone)
    assert seconds(joined) == pytest.approx(expected, rel=0.01)

    calls_before = len(upstream.inputs)
    again = await client.post(SPEECH, json=body(f"{FIXED_1} {run}"))
    assert again.headers["Cache-Status"] == "tts-cache; fwd=partial; detail=pieces-4-hits-3"
    await again.read()
    assert upstream.inputs[calls_before:] == ["Your room is 214."]  # a run of one piece
