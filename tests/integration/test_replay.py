"""Hits replay an allow-list of upstream headers: properties of the audio, never a caller's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.core.policy import DEFAULT_REPLAY_HEADERS, never_replayed, replayable
from proxy.core.routes import PRESETS, RuleError, rule_from_mapping
from proxy.store.service import replayable_headers
from tests.support.proxies import ProxyFactory
from tests.support.waits import until_stored

# What real TTS upstreams send beside the audio (OpenAI, ElevenLabs, gateways).
PER_CALL = [
    ("Set-Cookie", "__cf_bm=abc; path=/; HttpOnly"),
    ("X-Request-Id", "req_123"),
    ("Request-Id", "r-1"),
    ("OpenAI-Organization", "org-secret"),
    ("OpenAI-Processing-Ms", "412"),
    ("OpenAI-Version", "2020-10-01"),
    ("X-RateLimit-Remaining-Requests", "499"),
    ("RateLimit-Reset", "3"),
    ("Retry-After", "1"),
    ("X-Character-Count", "42"),
    ("Character-Cost", "42"),
    ("History-Item-Id", "hist_1"),
    ("X-Credits-Balance", "1000"),
    ("X-Account-Balance", "9.50"),
    ("CF-Ray", "8a1b"),
    ("Server-Timing", "tts;dur=400"),
    ("X-Audio-Request-Id", "a-1"),  # allowed prefix, but a per-call name
    ("X-Audio-Cache-Key", "f" * 64),  # the proxy's own
    ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
    ("Content-Type", "audio/wav"),  # stored apart
    ("Content-Length", "10"),
]
OF_THE_AUDIO = [
    ("Content-Disposition", 'attachment; filename="speech.wav"'),
    ("Content-Language", "es"),
    ("X-Sample-Rate", "22050"),
    ("X-Audio-Duration", "1.25"),
    ("X-Audio-Channels", "1"),
]


def test_only_the_allow_list_is_replayed() -> None:
    assert replayable(PER_CALL + OF_THE_AUDIO) == OF_THE_AUDIO
    assert replayable([*OF_THE_AUDIO, ("X-Voice-Style", "warm")]) == OF_THE_AUDIO


def test_a_route_may_allow_more_but_never_a_per_caller_header() -> None:
    allowed = (*DEFAULT_REPLAY_HEADERS, "x-voice-*", "set-cookie", "x-request-id")
    extra = [("X-Voice-Style", "warm"), ("x-voice-id", "v1")]
    assert replayable(PER_CALL + extra, allowed) == extra


def test_names_keep_their_spelling_and_order() -> None:
    headers = [("x-sample-rate", "1"), ("Content-Language", "fr"), ("X-SAMPLE-RATE", "2")]
    assert replayable(headers) == headers


@pytest.mark.parametrize("name", [n.lower() for n, _ in PER_CALL])
def test_per_call_headers_are_never_replayed(name: str) -> None:
    assert never_replayed(name)


def test_the_store_wrapper_uses_the_default_allow_list() -> None:
    assert replayable_headers(PER_CALL + OF_THE_AUDIO) == OF_THE_AUDIO


def test_rules_read_replay_headers_and_refuse_per_caller_ones() -> None:
    base = {"name": "r", "method": "POST", "path": "/tts", "text": "json:text"}
    assert rule_from_mapping(base).replay_headers == DEFAULT_REPLAY_HEADERS
    rule = rule_from_mapping({**base, "replay_headers": ["X-Voice-Id", "x-model-*"]})
    assert rule.replay_headers == (*DEFAULT_REPLAY_HEADERS, "x-voice-id", "x-model-*")
    for bad in (["Set-Cookie"], ["x-ratelimit-*"], ["OpenAI-Organization"], ["x-foo-balance"]):
        with pytest.raises(RuleError, match="never replayed"):
            rule_from_mapping({**base, "replay_headers": bad})
    for preset in PRESETS.values():
        assert all(r.replay_headers == DEFAULT_REPLAY_HEADERS for r in preset())


async def test_through_the_proxy_a_hit_carries_no_per_caller_header(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = upstream
    fake.extra_headers = {k: v for k, v in PER_CALL + OF_THE_AUDIO if k.lower() not in (
        "content-type", "content-length", "date")}  # fmt: skip
    client = await make_proxy(url)
    speech = {"model": "tts-1", "input": "Hola", "voice": "es", "response_format": "wav"}
    miss = await client.post("/v1/audio/speech", json=speech)
    await miss.read()
    assert miss.headers["OpenAI-Organization"] == "org-secret"  # the caller's own answer
    await until_stored(client, miss)
    await asyncio.sleep(0)
    hit = await client.post("/v1/audio/speech", json=speech)
    await hit.read()
    assert hit.headers["X-Cache"] == "HIT"
    for name, value in OF_THE_AUDIO:
        assert hit.headers[name] == value
    for name, value in PER_CALL:
        if name.lower() not in ("content-type", "content-length", "date"):
            # (the proxy sets an X-Request-Id of its own: never the upstream's)
            assert value not in hit.headers.getall(name, ()), name
    assert hit.headers["X-Audio-Cache-Key"] == miss.headers["X-Audio-Cache-Key"]
