"""End to end through a real proxy, a real Valkey and a loopback upstream."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from proxy.core.keys import CacheKey
from tests.support.loopback_upstream import fake_wav
from tests.support.proxies import service_of
from tests.support.speech import speech_body
from tests.support.waits import until_filled, until_stored

SPEECH = speech_body("Bienvenido al hotel", voice="es")


async def test_miss_then_hit_serves_identical_bytes(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    first = await client.post("/v1/audio/speech", json=SPEECH)
    body1 = await first.read()
    assert first.status == 200
    assert first.headers["X-Cache"] == "MISS"
    assert first.headers["Cache-Status"] == "tts-cache; fwd=miss; stored"
    key = first.headers["X-Audio-Cache-Key"]
    await until_stored(client, first)
    second = await client.post("/v1/audio/speech", json=SPEECH)
    body2 = await second.read()
    assert second.status == 200
    assert second.headers["X-Cache"] == "HIT"
    assert second.headers["Cache-Status"].startswith("tts-cache; hit; ttl=")
    assert second.headers["X-Audio-Cache-Key"] == key
    assert second.headers["Content-Type"] == "audio/wav"
    assert second.headers["Content-Length"] == str(len(body1))
    assert second.headers["X-Sample-Rate"] == "22050"  # upstream header replayed
    assert body1 == body2 == fake_wav("Bienvenido al hotel", "es", "tts-1|wav|None")
    assert fake.calls["openai"] == 1


async def test_whitespace_only_difference_is_a_hit(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    await (await client.post("/v1/audio/speech", json=SPEECH)).read()
    spaced = {**SPEECH, "input": "  Bienvenido   al\nhotel "}
    again = await client.post("/v1/audio/speech", json=spaced)
    assert again.headers["X-Cache"] == "HIT"
    assert fake.calls["openai"] == 1


@pytest.mark.parametrize(
    "change",
    [{"voice": "en"}, {"model": "tts-1-hd"}, {"response_format": "pcm"}, {"speed": 1.25},
     {"instructions": "whisper"}, {"input": "Bienvenido al hotel."}, {"unknown_field": 1}],
)  # fmt: skip
async def test_any_sound_field_change_is_a_miss(
    upstream: Any, make_proxy: Any, change: dict[str, Any]
) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    await (await client.post("/v1/audio/speech", json=SPEECH)).read()
    other = await client.post("/v1/audio/speech", json={**SPEECH, **change})
    await other.read()
    assert other.headers["X-Cache"] == "MISS"
    assert fake.calls["openai"] == 2


async def test_elevenlabs_preset(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    body = {"text": "Hola", "model_id": "eleven_multilingual_v2"}
    path = "/v1/text-to-speech/voice123?output_format=mp3_44100_128"
    r1 = await client.post(path, json=body)
    a = await r1.read()
    await until_stored(client, r1)
    r2 = await client.post(path + "&enable_logging=false", json=body)  # ignored field
    assert r2.headers["X-Cache"] == "HIT"
    assert await r2.read() == a
    r3 = await client.post("/v1/text-to-speech/voice123?output_format=pcm_16000", json=body)
    await r3.read()
    assert r3.headers["X-Cache"] == "MISS"
    r4 = await client.post("/v1/text-to-speech/other?output_format=mp3_44100_128", json=body)
    await r4.read()
    assert r4.headers["X-Cache"] == "MISS"
    assert fake.calls["elevenlabs"] == 3


@pytest.mark.parametrize(
    ("path", "route"),
    [("/process?INPUT_TEXT=Hello&VOICE=cmu-slt&LOCALE=en_US&AUDIO=WAVE_FILE", "marytts"),
     ("/api/tts?text=Hello&speaker_id=p225", "coqui")],
)  # fmt: skip
async def test_get_presets(upstream: Any, make_proxy: Any, path: str, route: str) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    r1 = await client.get(path)
    a = await r1.read()
    await until_stored(client, r1)
    r2 = await client.get(path)
    assert r2.headers["X-Cache"] == "HIT"
    assert await r2.read() == a
    assert fake.calls[route] == 1


async def test_marytts_form_post(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    form = {"INPUT_TEXT": "Hello", "VOICE": "cmu-slt", "LOCALE": "en_US"}
    r1 = await client.post("/process", data=form)
    await r1.read()
    await until_stored(client, r1)
    r2 = await client.post("/process", data=form)
    assert r2.headers["X-Cache"] == "HIT"
    assert fake.calls["marytts"] == 1


async def test_non_matching_routes_pass_through(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    r = await client.put("/other/x/y?a=1&b=2", data=b"z" * 70000)
    assert r.status == 201
    assert r.headers["X-Upstream"] == "yes"
    assert r.headers["X-Cache"] == "BYPASS"
    assert await r.json() == {
        "method": "PUT",
        "path": "/other/x/y",
        "query": "a=1&b=2",
        "len": 70000,
    }
    r2 = await client.get("/other/again")
    assert (await r2.json())["method"] == "GET"
    assert fake.calls["other"] == 2


async def test_ttl_follows_content_type(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    client = await make_proxy(url)
    service = service_of(client)
    cases = {"welcome_message": 7 * 86400, "availability_response": 12 * 3600, None: 86400}
    for i, (content_type, expected) in enumerate(cases.items()):
        headers = {"X-Audio-Cache-Content-Type": content_type} if content_type else {}
        r = await client.post(
            "/v1/audio/speech", json={**SPEECH, "input": f"text {i}"}, headers=headers
        )
        await r.read()
        await until_stored(client, r)
        ttl = await service.redis.ttl(
            service.keyspace.entry(CacheKey(r.headers["X-Audio-Cache-Key"]))
        )
        assert expected - 5 <= ttl <= expected


async def test_content_type_from_text_rules(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    rules = [{"pattern": r"^bienvenid", "content_type": "welcome_message"}]
    client = await make_proxy(url, audio_cache_content_type_rules=rules)
    r = await client.post("/v1/audio/speech", json=SPEECH)
    await r.read()
    await until_stored(client, r)
    service = service_of(client)
    info = await service.info(CacheKey(r.headers["X-Audio-Cache-Key"]))
    assert info is not None and info.content_class == "welcome_message"
    assert info.ttl_ms > 6 * 86400 * 1000


async def test_bad_content_type_header_is_a_400(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    client = await make_proxy(url)
    r = await client.post(
        "/v1/audio/speech", json=SPEECH, headers={"X-Audio-Cache-Content-Type": "Bad Name!"}
    )
    assert r.status == 400
    assert "X-Audio-Cache-Content-Type" in (await r.json())["error"]["field"]


@pytest.mark.parametrize("mode", ["error", "html", "empty", "no-store", "truncate"])
async def test_never_stores_bad_answers(upstream: Any, make_proxy: Any, mode: str) -> None:
    fake, url = upstream
    fake.mode = mode
    client = await make_proxy(url)
    r = await client.post("/v1/audio/speech", json=SPEECH)
    with contextlib.suppress(Exception):  # a truncated answer ends the connection
        await r.read()
    await until_filled(client)
    key = CacheKey(r.headers["X-Audio-Cache-Key"]) if "X-Audio-Cache-Key" in r.headers else None
    if mode == "error":
        assert r.status == 500  # upstream errors pass through as they are
    fake.mode = "ok"
    r2 = await client.post("/v1/audio/speech", json=SPEECH)
    await r2.read()
    assert r2.headers["X-Cache"] == "MISS"
    assert fake.calls["openai"] == 2
    if key is not None:
        assert key.hex == r2.headers["X-Audio-Cache-Key"]


async def test_over_size_limit_is_served_not_stored(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url, audio_cache_max_entry_size_mb=0.001)  # ~1 KB
    r = await client.post("/v1/audio/speech", json=SPEECH)
    assert len(await r.read()) > 1024
    await until_filled(client)
    r2 = await client.post("/v1/audio/speech", json=SPEECH)
    await r2.read()
    assert r2.headers["X-Cache"] == "MISS"
    assert fake.calls["openai"] == 2


async def test_chunked_upstream_is_stored(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    fake.mode = "chunked"
    client = await make_proxy(url)
    a = await (await client.post("/v1/audio/speech", json=SPEECH)).read()
    await until_filled(client)
    r2 = await client.post("/v1/audio/speech", json=SPEECH)
    assert r2.headers["X-Cache"] == "HIT"
    assert await r2.read() == a


async def test_no_store_request_neither_reads_nor_writes(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    r = await client.post("/v1/audio/speech", json=SPEECH, headers={"Cache-Control": "no-store"})
    await r.read()
    assert r.headers["X-Cache"] == "BYPASS"
    await until_filled(client)
    assert (await service_of(client).totals())["entries"] == 0
    r2 = await client.post("/v1/audio/speech", json=SPEECH)
    await r2.read()
    await until_stored(client, r2)
    r3 = await client.post("/v1/audio/speech", json=SPEECH, headers={"Cache-Control": "no-store"})
    await r3.read()
    assert r3.headers["X-Cache"] == "BYPASS"
    assert fake.calls["openai"] == 3


async def test_no_cache_request_refreshes(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    await (await client.post("/v1/audio/speech", json=SPEECH)).read()
    await until_filled(client)
    fake.extra_headers = {"X-Audio-Version": "2"}
    r = await client.post("/v1/audio/speech", json=SPEECH, headers={"Cache-Control": "no-cache"})
    await r.read()
    assert r.headers["Cache-Status"] == "tts-cache; fwd=request; stored"
    await until_filled(client)
    r2 = await client.post("/v1/audio/speech", json=SPEECH)
    assert r2.headers["X-Cache"] == "HIT"
    assert r2.headers["X-Audio-Version"] == "2"  # the refreshed entry
    assert fake.calls["openai"] == 2
    assert (await service_of(client).totals())["entries"] == 1


async def test_disabled_cache_is_pure_pass_through(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url, audio_cache_enabled=False)
    for _ in range(2):
        r = await client.post("/v1/audio/speech", json=SPEECH)
        await r.read()
        assert r.headers["X-Cache"] == "BYPASS"
    await until_filled(client)
    assert (await service_of(client).totals())["entries"] == 0
    assert fake.calls["openai"] == 2


async def test_sse_requests_share_the_plain_entry(upstream: Any, make_proxy: Any) -> None:
    # More in tests/integration/test_sse.py; this upstream ignores stream_format.
    fake, url = upstream
    client = await make_proxy(url, client_auth="none")
    r = await client.post("/v1/audio/speech", json=SPEECH)
    await r.read()
    await until_filled(client)
    r = await client.post("/v1/audio/speech", json={**SPEECH, "stream_format": "sse"})
    assert b"speech.audio.done" in await r.read()
    assert r.headers["X-Cache"] == "HIT" and r.headers["Content-Type"] == "text/event-stream"
    assert fake.calls["openai"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [(b"{not json", "body"), (b"[1,2]", "body"), (b'{"voice":"es"}', "json:input"),
     (b'{"input": 5, "voice": "es"}', "json:input"),
     (b'{"input": "  ", "voice": "es"}', "json:input"),
     (b'\xff\xfe', "body"),
     # Duplicate keys, lone surrogates, nesting past the bound, invalid UTF-8 in a string.
     (b'{"model": "tts-1", "input": "Hola", "voice": "es", "voice": "en"}', "json:voice"),
     (b'{"model": "tts-1", "input": "Hola \\ud800", "voice": "es"}', "json:input"),
     (b'{"model": "tts-1", "input": "Hola", "voice": "es", "x": ' + b"[" * 100000 + b"}",
      "body"),
     (b'{"model": "tts-1", "input": "Hola \xff", "voice": "es"}', "body")],
)  # fmt: skip
async def test_malformed_speech_requests_are_400(
    upstream: Any, make_proxy: Any, body: bytes, field: str
) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    r = await client.post(
        "/v1/audio/speech", data=body, headers={"Content-Type": "application/json"}
    )
    assert r.status == 400
    error = (await r.json())["error"]
    assert error["field"] == field
    assert error["status"] == 400 and error["message"]
    assert fake.calls["openai"] == 0


async def test_upstream_api_key_is_injected(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url, env={"UPSTREAM_API_KEY": "sk-secret"})
    await (
        await client.post("/v1/audio/speech", json=SPEECH, headers={"Authorization": "x"})
    ).read()
    assert fake.requests[-1]["headers"]["Authorization"] == "Bearer sk-secret"


async def test_health_and_readiness(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    client = await make_proxy(url)
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200, await ready.text()


async def test_unreachable_upstream_is_502_json(make_proxy: Any) -> None:
    from proxy.store.embedded import free_port

    client = await make_proxy(f"http://127.0.0.1:{free_port()}")
    r = await client.post("/v1/audio/speech", json=SPEECH)
    assert r.status == 502
    assert "upstream" in (await r.json())["error"]["message"]
