"""Headers that change the answer: keyed by the rule, and Vary honoured before storing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from proxy.core.policy import refusal_before_body, vary_refusal
from proxy.core.routes import PRESETS, rule_from_mapping
from tests.support.loopback_upstream import fake_wav
from tests.support.proxies import ProxyFactory, service_of
from tests.support.servers import served
from tests.support.waits import until_stored


@pytest.mark.parametrize(
    ("vary", "keyed", "reason"),
    [(None, (), None), ("", (), None),
     ("*", ("accept",), "vary"), ("Accept, *", ("accept",), "vary"),
     ("Accept", ("accept",), None), ("accept", ("Accept",), None),
     ("Accept", (), "vary"), ("Origin", ("accept",), "vary"),
     ("Accept, Origin", ("accept",), "vary"), ("Authorization", ("accept",), "vary"),
     ("Accept-Encoding", (), None), ("accept-encoding, Accept", ("accept",), None),
     (" , Accept ,", ("accept",), None),
     ("X-Microsoft-OutputFormat", ("x-microsoft-outputformat",), None),
     ("Cartesia-Version", ("accept",), "vary")],
)  # fmt: skip
def test_vary_refusal(vary: str | None, keyed: tuple[str, ...], reason: str | None) -> None:
    assert vary_refusal(vary, keyed) == reason


def test_refusal_before_body_checks_vary_against_the_keyed_headers() -> None:
    headers = {"content-type": "audio/wav", "vary": "Accept"}
    assert refusal_before_body(status=200, headers=headers, max_entry_bytes=10) == "vary"
    keyed = ("accept",)
    assert (
        refusal_before_body(status=200, headers=headers, max_entry_bytes=10, keyed_headers=keyed)
        is None
    )
    no_store = {**headers, "cache-control": "no-store"}
    assert refusal_before_body(status=200, headers=no_store, max_entry_bytes=10) == (
        "upstream_no_store"
    )


def describe(rule: Any, headers: dict[str, str]) -> Any:
    if rule.method == "GET":
        query, body = f"{rule.text.name}=Hola", b""
    elif rule.text.source == "form":
        query, body = "", f"{rule.text.name}=Hola".encode()
        headers = {**headers, "content-type": "application/x-www-form-urlencoded"}
    else:
        query, body = "", json.dumps({rule.text.name: "Hola"}).encode()
    params = {"voice_id": "v"} if "{voice_id}" in rule.path else {}
    return rule.describe(path_params=params, query=query, headers=headers, body=body)


@pytest.mark.parametrize("preset", ["openai", "elevenlabs", "get"])
def test_the_presets_do_not_split_one_sound_by_accept(preset: str) -> None:
    for rule in PRESETS[preset]():
        assert "accept" not in rule.headers
        plain = describe(rule, {}).params
        for accept in ("*/*", "application/octet-stream", "audio/mpeg"):  # SDKs differ
            assert describe(rule, {"accept": accept}).params == plain


def test_a_rule_that_keys_accept_tells_formats_apart() -> None:
    rule = rule_from_mapping(
        {"name": "negotiating", "method": "POST", "path": "/v1/audio/speech",
         "text": "json:input", "headers": ["Accept"]}
    )  # fmt: skip
    plain = describe(rule, {}).params
    assert describe(rule, {"accept": "*/*"}).params == plain  # absent means */* anyway
    wav = describe(rule, {"accept": "audio/wav"}).params
    mp3 = describe(rule, {"accept": "audio/mpeg"}).params
    assert wav["header:accept"] == "audio/wav"
    assert len({json.dumps(p, sort_keys=True) for p in (plain, wav, mp3)}) == 3


def test_a_rule_keys_provider_format_headers() -> None:
    rule = rule_from_mapping(
        {"name": "azure", "method": "POST", "path": "/cognitiveservices/v1",
         "text": "json:text", "headers": ["X-Microsoft-OutputFormat", "Cartesia-Version"]}
    )  # fmt: skip
    body = b'{"text": "Hola"}'
    a = rule.describe(
        path_params={}, query="", headers={"x-microsoft-outputformat": "riff-24khz-16bit-mono-pcm"},
        body=body,
    )  # fmt: skip
    b = rule.describe(
        path_params={}, query="", headers={"x-microsoft-outputformat": "audio-24khz-48kbitrate-mono-mp3"},
        body=body,
    )  # fmt: skip
    assert a is not None and b is not None and a.params != b.params


class VaryingUpstream:
    """Answers audio with a configurable Vary header."""

    def __init__(self) -> None:
        self.vary: str | None = None
        self.calls = 0

    async def speech(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls += 1
        headers = {"Vary": self.vary} if self.vary else {}
        audio = fake_wav(body["input"], request.headers.get("Accept", ""))
        return web.Response(body=audio, content_type="audio/wav", headers=headers)


@pytest.fixture
async def varying() -> AsyncIterator[tuple[VaryingUpstream, str]]:
    fake = VaryingUpstream()
    app = web.Application()
    app.router.add_post("/v1/audio/speech", fake.speech)
    async with served(app) as url:
        yield fake, url


SPEECH = {"model": "tts-1", "input": "Hola", "voice": "es", "response_format": "wav"}


async def test_an_upstream_negotiating_by_accept_is_not_stored_unless_keyed(
    varying: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = varying
    fake.vary = "Accept"
    client = await make_proxy(url)  # the openai preset does not key Accept
    wav = await client.post("/v1/audio/speech", json=SPEECH, headers={"Accept": "audio/wav"})
    mp3 = await client.post("/v1/audio/speech", json=SPEECH, headers={"Accept": "audio/mpeg"})
    assert await wav.read() == fake_wav("Hola", "audio/wav")
    assert await mp3.read() == fake_wav("Hola", "audio/mpeg")  # never the wav entry
    assert "stored" not in mp3.headers["Cache-Status"]
    assert fake.calls == 2


async def test_through_a_rule_keying_accept_each_format_has_its_entry(
    varying: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = varying
    fake.vary = "Accept"
    rule = {"name": "negotiating", "method": "POST", "path": "/v1/audio/speech",
            "text": "json:input", "headers": ["Accept"]}  # fmt: skip
    client = await make_proxy(url, routes=[rule])
    wav = await client.post("/v1/audio/speech", json=SPEECH, headers={"Accept": "audio/wav"})
    mp3 = await client.post("/v1/audio/speech", json=SPEECH, headers={"Accept": "audio/mpeg"})
    assert await wav.read() != await mp3.read()
    assert wav.headers["X-Audio-Cache-Key"] != mp3.headers["X-Audio-Cache-Key"]
    await until_stored(client, mp3)
    again = await client.post("/v1/audio/speech", json=SPEECH, headers={"Accept": "audio/mpeg"})
    assert again.headers["X-Cache"] == "HIT" and await again.read() == fake_wav(
        "Hola", "audio/mpeg"
    )
    assert fake.calls == 2


@pytest.mark.parametrize(
    ("vary", "stored"),
    [("*", False), ("Origin", False), ("Authorization, Accept", False), ("Accept-Encoding", True),
     (None, True)],
)  # fmt: skip
async def test_through_the_proxy_a_vary_the_key_does_not_cover_is_not_stored(
    varying: Any, make_proxy: ProxyFactory, vary: str | None, stored: bool
) -> None:
    fake, url = varying
    fake.vary = vary
    client = await make_proxy(url)
    first = await client.post("/v1/audio/speech", json=SPEECH)
    assert first.status == 200 and await first.read() == fake_wav("Hola", "*/*")
    assert ("; stored" in first.headers["Cache-Status"]) is stored
    await until_stored(client, first)
    assert (await service_of(client).totals())["entries"] == (1 if stored else 0)
