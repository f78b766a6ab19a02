"""Speech events (OpenAI's ``stream_format: "sse"``) share the plain request's entry: an SSE
miss is passed through and stored as audio, and each form hits the other's entry."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.core.sse import decode_events
from proxy.demo.upstream import SPEECH_CALLS, create_demo_upstream_app
from tests.support.proxies import ProxyClient
from tests.support.servers import served
from tests.support.speech import SPEECH_PATH, speech_body
from tests.support.waits import until_filled, until_stored

BODY = speech_body("Bienvenido al hotel", voice="es", model="gpt-4o-mini-tts")
SSE = {**BODY, "stream_format": "sse"}


@pytest.fixture
async def demo() -> Any:
    app = create_demo_upstream_app()
    async with served(app) as url:
        yield app, url


def calls(app: web.Application) -> int:
    return int(app[SPEECH_CALLS]["speech"])


async def post(client: ProxyClient, body: dict[str, Any]) -> tuple[aiohttp.ClientResponse, bytes]:
    r = await client.post(SPEECH_PATH, json=body)
    data = await r.read()
    assert r.status == 200, data[:300]
    await until_stored(client, r)
    return r, data


def sse_audio(data: bytes) -> bytes:
    decoded = decode_events(data)
    assert decoded.problem is None and decoded.done
    return decoded.audio


async def test_an_sse_miss_is_stored_and_a_plain_request_hits_it(
    demo: Any, make_proxy: Any
) -> None:
    app, url = demo
    client = await make_proxy(url, client_auth="none")
    r, events = await post(client, SSE)
    assert r.headers["Content-Type"] == "text/event-stream"
    assert r.headers["Cache-Status"] == "tts-cache; fwd=miss; stored"
    audio = sse_audio(events)
    assert audio[:4] == b"RIFF"
    r2, plain = await post(client, BODY)
    assert r2.headers["X-Cache"] == "HIT" and r2.headers["Content-Type"] == "audio/wav"
    assert plain == audio
    assert "x-audio-cache-sse-usage" not in {k.lower() for k in r2.headers}
    assert r2.headers["X-Audio-Cache-Key"] == r.headers["X-Audio-Cache-Key"]
    # The SSE request hits its own entry too, with the usage the upstream reported.
    r3, again = await post(client, SSE)
    assert r3.headers["X-Cache"] == "HIT" and r3.headers["Content-Type"] == "text/event-stream"
    assert sse_audio(again) == audio
    assert decode_events(again).usage == decode_events(events).usage
    assert json.loads(decode_events(again).usage)["total_tokens"] > 0
    assert calls(app) == 1


async def test_sse_after_plain_is_an_sse_hit_of_the_same_audio(demo: Any, make_proxy: Any) -> None:
    app, url = demo
    client = await make_proxy(url, client_auth="none")
    _, plain = await post(client, BODY)
    r, events = await post(client, SSE)
    assert r.headers["X-Cache"] == "HIT" and r.headers["Content-Type"] == "text/event-stream"
    assert r.headers["Cache-Status"].startswith("tts-cache; hit")
    assert sse_audio(events) == plain
    lines = [e for e in events.split(b"\n\n") if e]
    assert len(lines) > 2  # the audio comes in several deltas before the done event
    assert json.loads(lines[-1][6:]) == {
        "type": "speech.audio.done",
        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
    }
    assert calls(app) == 1


async def test_the_default_format_is_mp3_in_both_forms(demo: Any, make_proxy: Any) -> None:
    app, url = demo
    client = await make_proxy(url, client_auth="none")
    body = {"model": "gpt-4o-mini-tts", "input": "Good evening", "voice": "alloy"}
    _, events = await post(client, {**body, "stream_format": "sse"})
    r, plain = await post(client, body)
    assert r.headers["X-Cache"] == "HIT" and r.headers["Content-Type"] == "audio/mpeg"
    assert plain == sse_audio(events)
    assert calls(app) == 1


async def test_sse_refused_by_the_upstream_is_passed_back_and_not_stored(
    demo: Any, make_proxy: Any
) -> None:
    app, url = demo
    client = await make_proxy(url, client_auth="none")
    r = await client.post(SPEECH_PATH, json={**BODY, "model": "tts-1", "stream_format": "sse"})
    assert r.status == 400
    assert (await r.json())["error"]["param"] == "stream_format"
    await until_filled(client)
    r2, _ = await post(client, {**BODY, "model": "tts-1"})
    assert r2.headers["X-Cache"] == "MISS"
    assert calls(app) == 1  # the refusal made no audio


class BrokenSSE:
    """An SSE upstream that answers deltas of a WAV and, in ``mode``, misbehaves."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0
        self.audio = b"RIFF" + (4000).to_bytes(4, "little") + b"WAVEfmt " + bytes(4000)

    async def speech(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(0, len(self.audio), 1000):
            piece = base64.b64encode(self.audio[i : i + 1000]).decode()
            event = {"type": "speech.audio.delta", "audio": piece}
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        if self.mode == "no-done":
            await response.write_eof()
            return response
        if self.mode == "garbage":
            await response.write(b"data: {not json\n\n")
        done = {"type": "speech.audio.done", "usage": {"total_tokens": 7}}
        await response.write(b"data: " + json.dumps(done).encode() + b"\n\n")
        await response.write_eof()
        return response


@pytest.fixture
async def broken() -> Any:
    fake = BrokenSSE()
    app = web.Application()
    app.router.add_post(SPEECH_PATH, fake.speech)
    async with served(app) as url:
        yield fake, url


@pytest.mark.parametrize("mode", ["no-done", "garbage"])
async def test_a_broken_event_stream_is_passed_through_but_not_stored(
    broken: Any, make_proxy: Any, mode: str
) -> None:
    fake, url = broken
    fake.mode = mode
    client = await make_proxy(url, client_auth="none")
    for expected_calls in (1, 2):
        r = await client.post(SPEECH_PATH, json=SSE)
        data = await r.read()
        assert r.status == 200 and data.count(b"speech.audio.delta") == 5  # all passed on
        await until_filled(client)
        assert fake.calls == expected_calls
    fake.mode = "ok"
    r, _ = await post(client, SSE)
    assert r.headers["X-Cache"] == "MISS" and "stored" in r.headers["Cache-Status"]
    r2, plain = await post(client, BODY)
    assert r2.headers["X-Cache"] == "HIT" and plain == fake.audio
    assert fake.calls == 3


async def test_concurrent_sse_and_plain_misses_each_call_once_and_agree(
    broken: Any, make_proxy: Any
) -> None:
    fake, url = broken
    client = await make_proxy(url, client_auth="none")
    answers = await asyncio.gather(*(client.post(SPEECH_PATH, json=SSE) for _ in range(3)))
    bodies = [await r.read() for r in answers]
    assert all(sse_audio(b) == fake.audio for b in bodies)
    assert fake.calls == 1  # identical SSE misses share one fill
    await until_filled(client)
    r, plain = await post(client, BODY)
    assert r.headers["X-Cache"] == "HIT" and plain == fake.audio


async def test_the_openai_sdk_streams_sse_through_the_cache(demo: Any, make_proxy: Any) -> None:
    openai = pytest.importorskip("openai")
    app, url = demo
    client = await make_proxy(url, client_auth="none")
    sdk = openai.AsyncOpenAI(api_key="sk-test", base_url=str(client.make_url("/v1")))
    results = []
    for _ in range(2):
        async with sdk.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts",
            voice="alloy",
            input="Your room is ready",
            response_format="wav",
            stream_format="sse",
        ) as response:
            assert response.headers["content-type"] == "text/event-stream"
            results.append((response.headers["x-cache"], await response.read()))
        await until_filled(client)
    (first, events), (second, again) = results
    assert (first, second) == ("MISS", "HIT")
    assert sse_audio(events) == sse_audio(again)
    assert calls(app) == 1
    await sdk.close()


async def test_livekit_openai_tts_with_its_defaults_is_cached_on_the_second_run(
    demo: Any, make_proxy: Any
) -> None:
    plugin = pytest.importorskip("livekit.plugins.openai")
    app, url = demo
    client = await make_proxy(url, client_auth="none")
    tts = plugin.TTS(base_url=str(client.make_url("/v1")), api_key="sk-test")
    runs = []
    for _ in range(2):
        pcm = b""
        async with tts.synthesize("Welcome to the hotel") as stream:
            async for event in stream:
                pcm += bytes(event.frame.data)
        runs.append(pcm)
        await until_filled(client)
    assert runs[0] and runs[0] == runs[1]
    assert calls(app) == 1  # its default request (gpt-4o-mini-tts, mp3, sse) hit the second time
    await tts.aclose()
