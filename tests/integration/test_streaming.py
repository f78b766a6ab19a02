"""Stream-through misses and HTTP cache semantics, through a real proxy and a real Valkey.

The upstream is a loopback server that streams its audio in timed chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.core.keys import CacheKey
from tests.support.proxies import service_of
from tests.support.speech import speech_body
from tests.support.streaming_upstream import StreamingUpstream, serve
from tests.support.waits import eventually

TEXT = "Welcome to the hotel, your room is ready"
SPEECH = speech_body(TEXT)


@pytest.fixture
async def slow() -> AsyncIterator[tuple[StreamingUpstream, str]]:
    upstream = StreamingUpstream(chunks=5, chunk_size=2000, delay=0.1)
    async with serve(upstream) as url:
        yield upstream, url


async def stored(client: Any, key: str, *, within: float = 3.0) -> bool:
    """Whether the entry appears in the store within ``within`` seconds."""

    async def present() -> bool:
        return await service_of(client).fetch(CacheKey(key)) is not None

    try:
        await eventually(present, within, interval=0.02)
    except AssertionError:
        return False
    return True


# -- stream-through -------------------------------------------------------------------


async def test_first_byte_arrives_before_the_upstream_finishes(slow: Any, make_proxy: Any) -> None:
    upstream, url = slow
    client = await make_proxy(url)
    loop = asyncio.get_running_loop()
    response = await client.post("/v1/audio/speech", json=SPEECH)
    first = await response.content.readany()
    first_at = loop.time()
    rest = await response.read()
    assert response.status == 200
    assert response.headers["X-Cache"] == "MISS"
    assert first + rest == upstream.audio(TEXT)
    assert upstream.finished_at, "the upstream finished"
    # 5 chunks 100 ms apart: the upstream needs ~400 ms; the first byte must not wait for it.
    assert first_at < upstream.finished_at[0] - 0.2
    assert await stored(client, response.headers["X-Audio-Cache-Key"])


async def test_unchunked_upstream_keeps_its_length_and_streams(make_proxy: Any) -> None:
    upstream = StreamingUpstream(chunks=4, delay=0.1, chunked=False)
    async with serve(upstream) as url:
        client = await make_proxy(url)
        response = await client.post("/v1/audio/speech", json=SPEECH)
        first = await response.content.readany()
        assert not upstream.finished_at  # still streaming
        assert response.headers["Content-Length"] == str(len(upstream.audio(TEXT)))
        assert "Transfer-Encoding" not in response.headers
        assert first + await response.read() == upstream.audio(TEXT)


async def test_client_disconnect_does_not_stop_the_fill(slow: Any, make_proxy: Any) -> None:
    upstream, url = slow
    client = await make_proxy(url)
    response = await client.post("/v1/audio/speech", json=SPEECH)
    assert await response.content.readany()
    key = response.headers["X-Audio-Cache-Key"]
    response.close()  # hang up mid-stream
    assert not upstream.finished_at
    assert await stored(client, key)
    assert upstream.aborted == 0
    again = await client.post("/v1/audio/speech", json=SPEECH)
    assert again.headers["X-Cache"] == "HIT"
    assert await again.read() == upstream.audio(TEXT)
    assert upstream.calls == 1


async def test_disconnect_cancels_the_fill_when_configured(slow: Any, make_proxy: Any) -> None:
    upstream, url = slow
    client = await make_proxy(url, fill_continue_after_disconnect=False)
    response = await client.post("/v1/audio/speech", json=SPEECH)
    assert await response.content.readany()
    key = response.headers["X-Audio-Cache-Key"]
    response.close()
    assert not await stored(client, key, within=1.0)
    assert upstream.aborted == 1
    assert not upstream.finished_at


async def test_upstream_failure_mid_stream_cuts_every_reader_short(make_proxy: Any) -> None:
    upstream = StreamingUpstream(chunks=6, delay=0.05, mode="fail")
    async with serve(upstream) as url:
        # Not about credentials: with the default (`upstream`), a reader arriving after the
        # first answer's headers has a verified credential and joins another flight.
        client = await make_proxy(url, client_auth="none")

        async def one() -> bytes:
            response = await client.post("/v1/audio/speech", json=SPEECH)
            assert response.status == 200
            return await response.read()

        results = await asyncio.gather(*(one() for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, aiohttp.ClientPayloadError) for r in results), results
        assert upstream.calls == 1
        upstream.mode = "ok"  # at once: a failed answer is never replayed to a new request
        response = await client.post("/v1/audio/speech", json=SPEECH)
        assert await response.read() == upstream.audio(TEXT)
        assert response.headers["X-Cache"] == "MISS"  # nothing was stored
        assert upstream.calls == 2


async def test_upstream_error_is_passed_on_and_not_stored(make_proxy: Any) -> None:
    upstream = StreamingUpstream(mode="error")
    async with serve(upstream) as url:
        client = await make_proxy(url)
        for _ in range(2):
            response = await client.post("/v1/audio/speech", json=SPEECH)
            assert response.status == 500
            assert (await response.json())["error"]["message"] == "synthesis failed"
        assert upstream.calls == 2


async def test_head_miss_fetches_and_stores_the_whole_audio(make_proxy: Any) -> None:
    from tests.support.loopback_upstream import LoopbackUpstream, fake_wav

    fake = LoopbackUpstream()
    async with serve_app(fake) as url:
        client = await make_proxy(url)
        head = await client.head("/api/tts?text=Hello&speaker_id=p225")
        assert head.status == 200
        assert await head.read() == b""
        audio = fake_wav("Hello", "p225")
        assert head.headers["Content-Length"] == str(len(audio))
        get = await client.get("/api/tts?text=Hello&speaker_id=p225")
        assert get.headers["X-Cache"] == "HIT"
        assert await get.read() == audio
        assert fake.calls["coqui"] == 1


@contextlib.asynccontextmanager
async def serve_app(fake: Any) -> AsyncIterator[str]:
    from aiohttp.test_utils import TestServer

    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


# -- ranges and conditional requests ----------------------------------------------------

AUDIO_LEN = 5 * 2000
RANGES = [
    ("bytes=0-99", 206, 0, 99),
    ("bytes=9990-", 206, 9990, 9999),
    ("bytes=-10", 206, 9990, 9999),
    ("bytes=100-20000", 206, 100, 9999),  # the end is clamped to the length
    ("bytes=-20000", 206, 0, 9999),
    ("bytes=10000-", 416, 0, 0),
    ("bytes=-0", 416, 0, 0),
    ("bytes=5-3", 200, 0, 9999),  # invalid: ignored
    ("items=0-5", 200, 0, 9999),  # not a byte range: ignored
]


def check_range(response: Any, body: bytes, audio: bytes, status: int, a: int, b: int) -> None:
    assert response.status == status, (response.status, body[:80])
    assert response.headers["Accept-Ranges"] == "bytes"
    if status == 206:
        assert body == audio[a : b + 1]
        assert response.headers["Content-Range"] == f"bytes {a}-{b}/{len(audio)}"
        assert response.headers["Content-Length"] == str(b - a + 1)
    elif status == 416:
        assert response.headers["Content-Range"] == f"bytes */{len(audio)}"
    else:
        assert body == audio
        assert "Content-Range" not in response.headers


@pytest.fixture
async def quick() -> AsyncIterator[tuple[StreamingUpstream, str]]:
    upstream = StreamingUpstream(chunks=5, chunk_size=2000, delay=0.0)
    async with serve(upstream) as url:
        yield upstream, url


async def warm(client: Any) -> str:
    response = await client.post("/v1/audio/speech", json=SPEECH)
    await response.read()
    key = str(response.headers["X-Audio-Cache-Key"])
    assert await stored(client, key)
    return key


@pytest.mark.parametrize(("header", "status", "a", "b"), RANGES)
async def test_ranges_on_a_hit(quick: Any, make_proxy: Any, header: str, status: int, a: int, b: int) -> None:  # fmt: skip
    upstream, url = quick
    client = await make_proxy(url)
    await warm(client)
    response = await client.post("/v1/audio/speech", json=SPEECH, headers={"Range": header})
    check_range(response, await response.read(), upstream.audio(TEXT), status, a, b)
    assert response.headers["X-Cache"] == "HIT"


@pytest.mark.parametrize(("header", "status", "a", "b"), RANGES)
async def test_ranges_on_audio_by_key(quick: Any, make_proxy: Any, header: str, status: int, a: int, b: int) -> None:  # fmt: skip
    upstream, url = quick
    client = await make_proxy(url)
    key = await warm(client)
    response = await client.get(f"/audio/{key}", headers={"Range": header})
    check_range(response, await response.read(), upstream.audio(TEXT), status, a, b)


@pytest.mark.parametrize(("header", "status", "a", "b"), RANGES)
async def test_ranges_on_a_miss(slow: Any, make_proxy: Any, header: str, status: int, a: int, b: int) -> None:  # fmt: skip
    upstream, url = slow
    client = await make_proxy(url)
    response = await client.post("/v1/audio/speech", json=SPEECH, headers={"Range": header})
    check_range(response, await response.read(), upstream.audio(TEXT), status, a, b)
    assert response.headers["X-Cache"] == "MISS"
    assert response.headers["Cache-Status"] == "tts-cache; fwd=miss; stored"
    assert "Range" not in upstream.seen_headers[0]  # the whole audio was fetched and stored
    assert upstream.calls == 1


async def validators(client: Any) -> tuple[str, str, str]:
    key = await warm(client)
    response = await client.get(f"/audio/{key}")
    await response.read()
    return key, response.headers["ETag"], response.headers["Last-Modified"]


CONDITIONALS: list[tuple[str, dict[str, str], int]] = [
    ("If-None-Match", {"If-None-Match": "{etag}"}, 304),
    ("If-None-Match list", {"If-None-Match": '"other", {etag}'}, 304),
    ("If-None-Match weak", {"If-None-Match": "W/{etag}"}, 304),
    ("If-None-Match star", {"If-None-Match": "*"}, 304),
    ("If-None-Match other", {"If-None-Match": '"other"'}, 200),
    ("If-Modified-Since same", {"If-Modified-Since": "{lm}"}, 304),
    ("If-Modified-Since older", {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}, 200),
    # If-None-Match wins over If-Modified-Since.
    ("both", {"If-None-Match": '"other"', "If-Modified-Since": "{lm}"}, 200),
    ("If-Range etag", {"Range": "bytes=0-9", "If-Range": "{etag}"}, 206),
    ("If-Range other etag", {"Range": "bytes=0-9", "If-Range": '"other"'}, 200),
    ("If-Range weak etag", {"Range": "bytes=0-9", "If-Range": "W/{etag}"}, 200),
    ("If-Range date", {"Range": "bytes=0-9", "If-Range": "{lm}"}, 206),
    ("If-Range old date", {"Range": "bytes=0-9", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"}, 200),
]  # fmt: skip


def fill_in(headers: dict[str, str], etag: str, lm: str) -> dict[str, str]:
    return {k: v.replace("{etag}", etag).replace("{lm}", lm) for k, v in headers.items()}


CONDITIONAL_CASES = [
    pytest.param(where, headers, status, id=f"{where}: {name}")
    for where in ("hit", "by key", "miss")
    for name, headers, status in CONDITIONALS
    # A refill gets a new Last-Modified, so date validators are tested on stored entries.
    if not (where == "miss" and "{lm}" in "".join(headers.values()))
]


@pytest.mark.parametrize(("where", "headers", "status"), CONDITIONAL_CASES)
async def test_conditional_requests(
    quick: Any, make_proxy: Any, where: str, headers: dict[str, str], status: int
) -> None:
    upstream, url = quick
    client = await make_proxy(url)
    audio = upstream.audio(TEXT)
    key, etag, lm = await validators(client)
    sent = fill_in(headers, etag, lm)
    if where == "miss":
        await service_of(client).delete(CacheKey(key))
        response = await client.post("/v1/audio/speech", json=SPEECH, headers=sent)
        body = await response.read()
        assert response.headers["X-Cache"] == "MISS"
        assert upstream.calls == 2
    elif where == "hit":
        response = await client.post("/v1/audio/speech", json=SPEECH, headers=sent)
        body = await response.read()
        assert response.headers["X-Cache"] == "HIT"
    else:
        response = await client.get(f"/audio/{key}", headers=sent)
        body = await response.read()
    assert response.status == status, (where, headers, response.status)
    assert response.headers["ETag"] == etag  # same key, same audio: same validator
    if status == 304:
        assert body == b""
    elif status == 206:
        assert body == audio[:10]
        assert response.headers["Content-Range"] == f"bytes 0-9/{len(audio)}"
    else:
        assert body == audio


@pytest.mark.parametrize("where", ["hit", "by key", "miss"])
async def test_head_sends_headers_only(quick: Any, make_proxy: Any, where: str) -> None:
    upstream, url = quick
    client = await make_proxy(url)
    audio = upstream.audio(TEXT)
    if where == "miss":
        # A HEAD on the POST route is not a speech request; a HEAD of a miss is tested
        # above on a GET route. Here: HEAD by key right after a streamed miss.
        response = await client.post("/v1/audio/speech", json=SPEECH)
        await response.read()
        key = response.headers["X-Audio-Cache-Key"]
        assert await stored(client, key)
        response = await client.head(f"/audio/{key}")
    elif where == "hit":
        key = await warm(client)
        response = await client.head(f"/audio/{key}")
    else:
        key = await warm(client)
        response = await client.head(f"/audio/{key}", headers={"Range": "bytes=0-9"})
    assert await response.read() == b""
    if where == "by key":
        assert response.status == 206
        assert response.headers["Content-Length"] == "10"
    else:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(len(audio))
    assert response.headers["Content-Type"] == "audio/wav"
    assert response.headers["ETag"].startswith('"')


async def test_hit_headers(quick: Any, make_proxy: Any) -> None:
    upstream, url = quick
    client = await make_proxy(url)
    key = await warm(client)
    response = await client.post("/v1/audio/speech", json=SPEECH)
    assert await response.read() == upstream.audio(TEXT)
    h = response.headers
    assert h["Content-Length"] == str(AUDIO_LEN)
    assert h["Accept-Ranges"] == "bytes"
    assert h["ETag"].startswith('"') and not h["ETag"].startswith("W/")
    assert h["Last-Modified"].endswith(" GMT")
    assert 0 <= int(h["Age"]) <= 2
    max_age = int(h["Cache-Control"].removeprefix("max-age="))
    assert 86400 - 5 <= max_age <= 86400  # the remaining TTL of the default class
    assert h["Content-Location"] == f"/audio/{key}"
    assert h["X-Audio-Voice"] == "es"  # the upstream's own header is replayed
    by_key = await client.get(h["Content-Location"])
    assert await by_key.read() == upstream.audio(TEXT)
    assert by_key.headers["ETag"] == h["ETag"]


async def test_content_location_on_a_miss(slow: Any, make_proxy: Any) -> None:
    upstream, url = slow
    client = await make_proxy(url)
    response = await client.post("/v1/audio/speech", json=SPEECH)
    assert await response.read() == upstream.audio(TEXT)
    location = response.headers["Content-Location"]
    assert location == f"/audio/{response.headers['X-Audio-Cache-Key']}"
    assert await stored(client, response.headers["X-Audio-Cache-Key"])
    by_key = await client.get(location)
    assert by_key.status == 200
    assert await by_key.read() == upstream.audio(TEXT)


@pytest.mark.parametrize(
    ("path", "status"),
    [("/audio/" + "a" * 64, 404), ("/audio/" + "A" * 64, 400), ("/audio/" + "a" * 63, 400),
     ("/audio/xyz", 400), ("/audio/" + "g" * 64, 400)],
)  # fmt: skip
async def test_audio_by_key_validates_and_404s(
    quick: Any, make_proxy: Any, path: str, status: int
) -> None:
    _, url = quick
    client = await make_proxy(url, client_auth="none")  # who may read by key: test_client_auth
    response = await client.get(path)
    assert response.status == status
    error = (await response.json())["error"]
    assert error["field"] == "key"
    assert error["status"] == status


async def test_audio_path_prefix_is_configurable(quick: Any, make_proxy: Any) -> None:
    upstream, url = quick
    client = await make_proxy(url, audio_path_prefix="/tts/cached")
    response = await client.post("/v1/audio/speech", json=SPEECH)
    await response.read()
    key = response.headers["X-Audio-Cache-Key"]
    assert response.headers["Content-Location"] == f"/tts/cached/{key}"
    assert await stored(client, key)
    by_key = await client.get(f"/tts/cached/{key}", headers={"Range": "bytes=-4"})
    assert by_key.status == 206
    assert await by_key.read() == upstream.audio(TEXT)[-4:]
