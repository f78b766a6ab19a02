"""Each provider preset through the real proxy: a miss goes to the provider's loopback stub,
the repeat is a hit with the same bytes, and a JSON answer is replayed exactly as sent."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.core.keys import CacheKey
from tests.support.provider_stubs import ProviderStubs
from tests.support.proxies import ProxyClient, ProxyFactory, service_of
from tests.support.servers import served
from tests.support.waits import until_filled, until_prefetched, until_stored

PRESETS = ["elevenlabs", "google", "azure", "deepgram", "cartesia", "polly"]


@pytest.fixture
async def providers() -> AsyncIterator[tuple[ProviderStubs, str]]:
    stubs = ProviderStubs()
    async with served(stubs.app()) as url:
        yield stubs, url


@pytest.fixture
async def presets(
    make_proxy: ProxyFactory, providers: tuple[ProviderStubs, str]
) -> tuple[ProviderStubs, ProxyClient]:
    """The provider stubs, and a proxy with every preset in front of them."""
    stubs, url = providers
    return stubs, await make_proxy(url, routes=PRESETS, client_auth="none")


GOOGLE = {
    "input": {"text": "Welcome to the hotel."},
    "voice": {"languageCode": "en-US", "name": "en-US-Neural2-C"},
    "audioConfig": {"audioEncoding": "LINEAR16", "sampleRateHertz": 24000},
}
SSML = "<speak version='1.0' xml:lang='en-US'><voice name='en-US-JennyNeural'>Hi.</voice></speak>"
# (route name as counted by the stub, method kwargs for the client's post)
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("google", "/v1/text:synthesize", {"json": GOOGLE}),
    ("google-beta", "/v1beta1/text:synthesize", {"json": GOOGLE}),
    (
        "elevenlabs-timestamps",
        "/v1/text-to-speech/v1d/with-timestamps?output_format=mp3_44100_128",
        {"json": {"text": "Hola.", "model_id": "eleven_multilingual_v2"},
         "headers": {"xi-api-key": "k"}},
    ),
    (
        "azure",
        "/cognitiveservices/v1",
        {"data": SSML, "headers": {"Content-Type": "application/ssml+xml",
                                   "X-Microsoft-OutputFormat": "audio-24khz-48kbitrate-mono-mp3",
                                   "Ocp-Apim-Subscription-Key": "k"}},
    ),
    (
        "deepgram",
        "/v1/speak?model=aura-asteria-en&encoding=linear16&container=wav&sample_rate=24000",
        {"json": {"text": "Hi there."}, "headers": {"Authorization": "Token k"}},
    ),
    (
        "cartesia",
        "/tts/bytes",
        {"json": {"transcript": "Hi.", "model_id": "sonic-2",
                  "voice": {"mode": "id", "id": "a0e9"},
                  "output_format": {"container": "raw", "encoding": "pcm_s16le",
                                    "sample_rate": 24000}, "language": "en"},
         "headers": {"X-API-Key": "k", "Cartesia-Version": "2024-11-13"}},
    ),
    (
        "polly",
        "/v1/speech",
        {"json": {"Text": "Hi.", "VoiceId": "Joanna", "OutputFormat": "mp3", "Engine": "neural"}},
    ),
]  # fmt: skip


@pytest.mark.parametrize(("route", "path", "kwargs"), CASES, ids=[c[0] for c in CASES])
async def test_a_miss_then_a_hit_with_the_same_bytes(
    presets: tuple[ProviderStubs, ProxyClient],
    route: str,
    path: str,
    kwargs: dict[str, Any],
) -> None:
    stubs, client = presets
    first = await client.post(path, **kwargs)
    sent = await first.read()
    assert first.status == 200, sent
    assert first.headers["X-Cache"] == "MISS"
    assert first.headers["Cache-Status"] == "tts-cache; fwd=miss; stored"
    await until_stored(client, first)
    second = await client.post(path, **kwargs)
    assert second.status == 200
    assert second.headers["X-Cache"] == "HIT"
    assert await second.read() == sent
    assert second.headers["Content-Type"] == first.headers["Content-Type"]
    assert stubs.calls[route] == 1


async def test_a_json_answer_is_replayed_byte_for_byte(
    presets: tuple[ProviderStubs, ProxyClient],
) -> None:
    _, client = presets
    miss = await client.post("/v1beta1/text:synthesize", json=GOOGLE)
    sent = await miss.read()
    assert b'\n  "audioContent": "' in sent  # the stub's own spacing
    assert set(json.loads(sent)) == {"audioContent", "timepoints", "audioConfig"}
    assert base64.b64decode(json.loads(sent)["audioContent"])[:4] == b"RIFF"
    await until_stored(client, miss)
    cached = await service_of(client).get(_key(miss))
    assert cached is not None and cached.audio == sent
    assert cached.media_type.startswith("application/json")
    hit = await client.post("/v1beta1/text:synthesize", json=GOOGLE)
    assert hit.headers["X-Cache"] == "HIT" and await hit.read() == sent


def _key(response: Any) -> CacheKey:
    return CacheKey(response.headers["X-Audio-Cache-Key"])


@pytest.mark.parametrize("mode", ["error-json", "bad-base64", "wrong-type"])
@pytest.mark.parametrize(
    ("route", "path", "body"),
    [
        ("google", "/v1/text:synthesize", GOOGLE),
        ("elevenlabs-timestamps", "/v1/text-to-speech/v1d/with-timestamps", {"text": "Hola."}),
    ],
)
async def test_a_json_answer_without_good_audio_is_passed_on_but_never_stored(
    presets: tuple[ProviderStubs, ProxyClient],
    mode: str,
    route: str,
    path: str,
    body: dict[str, Any],
) -> None:
    stubs, client = presets
    stubs.mode = mode
    first = await client.post(path, json=body)
    assert first.status == 200  # the client gets what the upstream said
    await first.read()
    await until_filled(client)
    assert await service_of(client).get(_key(first)) is None
    again = await client.post(path, json=body)
    assert again.headers["X-Cache"] == "MISS"
    assert stubs.calls[route] == 2


async def test_google_audio_must_be_of_the_requested_encoding(
    presets: tuple[ProviderStubs, ProxyClient],
) -> None:
    """MP3 audio in the answer to a LINEAR16 request is passed on, never stored."""
    stubs, client = presets
    stubs.mode = "mp3-always"
    asked_wav = await client.post("/v1/text:synthesize", json=GOOGLE)
    await asked_wav.read()
    mp3 = {**GOOGLE, "audioConfig": {"audioEncoding": "MP3"}}
    asked_mp3 = await client.post("/v1/text:synthesize", json=mp3)
    await asked_mp3.read()
    await until_filled(client)
    assert await service_of(client).get(_key(asked_wav)) is None
    assert await service_of(client).get(_key(asked_mp3)) is not None
    assert stubs.calls["google"] == 2


async def test_keyed_fields_reach_separate_entries(
    presets: tuple[ProviderStubs, ProxyClient],
) -> None:
    """A changed sound field misses (and gets its own audio) through the real proxy."""
    stubs, client = presets
    headers = {"X-API-Key": "k", "Cartesia-Version": "2024-11-13"}
    body = {"transcript": "Hi.", "model_id": "sonic-2", "voice": {"mode": "id", "id": "a"},
            "output_format": {"container": "wav", "encoding": "pcm_s16le", "sample_rate": 24000}}  # fmt: skip
    one = await client.post("/tts/bytes", json=body, headers=headers)
    a = await one.read()
    await until_stored(client, one)
    newer = await client.post(
        "/tts/bytes", json=body, headers={**headers, "Cartesia-Version": "2025-04-16"}
    )
    b = await newer.read()
    assert newer.headers["X-Cache"] == "MISS" and a != b
    faster = {**body, "output_format": {**body["output_format"], "sample_rate": 16000}}
    other = await client.post("/tts/bytes", json=faster, headers=headers)
    assert other.headers["X-Cache"] == "MISS" and await other.read() not in (a, b)
    assert stubs.calls["cartesia"] == 3


async def test_polly_speech_marks_pass_through_uncached(
    presets: tuple[ProviderStubs, ProxyClient],
) -> None:
    stubs, client = presets
    body = {"Text": "Hi.", "VoiceId": "Joanna", "OutputFormat": "json", "SpeechMarkTypes": ["word"]}
    for _ in range(2):
        r = await client.post("/v1/speech", json=body)
        assert r.status == 200 and b'"type": "word"' in await r.read()
    assert stubs.calls["polly"] == 2


async def test_a_bad_request_on_a_preset_route_names_the_field(
    presets: tuple[ProviderStubs, ProxyClient],
) -> None:
    stubs, client = presets
    r = await client.post("/v1/text:synthesize", json={**GOOGLE, "input": {}})
    assert r.status == 400
    assert (await r.json())["error"]["field"] == "json:input.text"
    r = await client.post(
        "/cognitiveservices/v1", data=b"\xff\xfe", headers={"Content-Type": "application/ssml+xml"}
    )
    assert r.status == 400 and (await r.json())["error"]["field"] == "body"
    assert sum(stubs.calls.values()) == 0


async def test_google_answers_vary_on_origin_and_a_browser_origin_gets_its_own_entry(
    presets: tuple[ProviderStubs, ProxyClient],
) -> None:
    stubs, client = presets
    server = await client.post("/v1/text:synthesize", json=GOOGLE)
    assert server.headers.getall("Vary") == ["Origin", "X-Origin", "Referer"]
    await server.read()
    await until_stored(client, server)
    browser = await client.post(
        "/v1/text:synthesize", json=GOOGLE, headers={"Origin": "https://hotel.example"}
    )
    await browser.read()
    assert browser.headers["X-Cache"] == "MISS"
    await until_stored(client, browser)
    again = await client.post(
        "/v1/text:synthesize", json=GOOGLE, headers={"Origin": "https://hotel.example"}
    )
    assert again.headers["X-Cache"] == "HIT"
    assert stubs.calls["google"] == 2


# (route, what the stub counts, prefetch params, the client's request kwargs)
PREFETCHED: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("google", "/v1/text:synthesize",
     {"voice": GOOGLE["voice"], "audioConfig": GOOGLE["audioConfig"]}, {"json": GOOGLE}),
    ("polly", "/v1/speech", {"VoiceId": "Joanna", "OutputFormat": "mp3", "Engine": "neural"},
     {"json": {"Text": "Welcome to the hotel.", "VoiceId": "Joanna", "OutputFormat": "mp3",
               "Engine": "neural"}}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("route", "path", "params", "kwargs"), PREFETCHED, ids=[p[0] for p in PREFETCHED]
)
async def test_a_text_prefetched_with_params_is_a_hit_for_the_clients_request(
    make_proxy: ProxyFactory,
    providers: tuple[ProviderStubs, str],
    route: str,
    path: str,
    params: dict[str, Any],
    kwargs: dict[str, Any],
) -> None:
    """The text goes where the preset's request holds it (Google's input.text, nested)."""
    stubs, url = providers
    auth = {"Authorization": "Bearer prefetch-admin"}
    client = await make_proxy(
        url, routes=PRESETS, client_auth="none", env={"ADMIN_TOKEN": "prefetch-admin"}
    )
    item = {"route": route, "text": "Welcome to the hotel.", "params": params}
    started = await client.post(
        "/admin/audio-cache/prefetch", json={"requests": [item]}, headers=auth
    )
    assert started.status == 202
    job = await until_prefetched(client, (await started.json())["job"], auth)
    assert job["results"] == {"stored": 1} and job["errors"] == []
    assert stubs.requests[-1]["body"] == kwargs["json"]  # the upstream got a real request
    hit = await client.post(path, **kwargs)
    assert hit.status == 200 and hit.headers["X-Cache"] == "HIT"
    await hit.read()
    assert stubs.calls[route] == 1
