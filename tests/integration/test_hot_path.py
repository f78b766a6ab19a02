"""The lean hit path on a real proxy, real Valkey and a loopback upstream.

A repeated request is answered from the hot tier with headers prepared once per entry and
a description memo keyed by everything describing reads. Nothing a client can see may
differ from an answer built the long way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.hot_replicas import hot_of, hot_proxy, make_hot, replicas
from tests.support.proxies import ProxyFactory, raw_request, service_of
from tests.support.speech import speech_body

UNSTABLE = {"Date", "X-Request-ID", "Age", "Cache-Status", "Cache-Control"}


async def test_a_hot_answer_matches_an_answer_from_the_store(
    upstream: Any, make_proxy: ProxyFactory, redis_url: str
) -> None:
    _, url = upstream
    hot, _ = await replicas(make_proxy, url)
    cold = await make_proxy(url, prefix=service_of(hot).keyspace.prefix, audio_cache_hot_tier_mb=0)
    key = await make_hot(hot, "The spa opens at nine.")
    body = speech_body("The spa opens at nine.")
    a = await hot.post("/v1/audio/speech", json=body, headers={"X-Request-ID": "trace-1"})
    b = await cold.post("/v1/audio/speech", json=body)
    assert key in hot_of(hot)
    audio = await a.read()
    assert audio.startswith(b"RIFF") and audio == await b.read()
    assert a.headers["X-Cache"] == b.headers["X-Cache"] == "HIT"
    assert a.headers["X-Request-ID"] == "trace-1"
    stable_a = {k: v for k, v in a.headers.items() if k not in UNSTABLE}
    stable_b = {k: v for k, v in b.headers.items() if k not in UNSTABLE}
    assert stable_a == stable_b
    for r in (a, b):
        assert r.headers["Cache-Status"].startswith("tts-cache; hit; ttl=")
        ttl = int(r.headers["Cache-Status"].rpartition("=")[2])
        assert r.headers["Cache-Control"] == f"max-age={ttl}"
        assert 0 < ttl <= 86400


async def test_age_and_ttl_move_on_between_hot_hits(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    client = await hot_proxy(make_proxy, url, "Checkout is at noon.")
    body = speech_body("Checkout is at noon.")
    first = await client.post("/v1/audio/speech", json=body)
    await asyncio.sleep(2.1)  # two whole seconds pass: Age and the TTL must move by 2
    second = await client.post("/v1/audio/speech", json=body)
    assert second.headers["X-Cache"] == "HIT"
    assert int(second.headers["Age"]) >= int(first.headers["Age"]) + 2
    ttl = [int(r.headers["Cache-Control"].partition("=")[2]) for r in (first, second)]
    assert ttl[1] <= ttl[0] - 2
    assert second.headers["X-Request-ID"] != first.headers["X-Request-ID"]


async def test_validators_and_ranges_on_a_hot_entry(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    client = await hot_proxy(make_proxy, url, "Towels are by the pool.")
    body = speech_body("Towels are by the pool.")
    whole = await client.post("/v1/audio/speech", json=body)
    audio = await whole.read()
    etag = whole.headers["ETag"]
    not_modified = await client.post("/v1/audio/speech", json=body, headers={"If-None-Match": etag})
    assert not_modified.status == 304
    assert await not_modified.read() == b""
    part = await client.post("/v1/audio/speech", json=body, headers={"Range": "bytes=4-13"})
    assert part.status == 206
    assert await part.read() == audio[4:14]
    assert part.headers["Content-Range"] == f"bytes 4-13/{len(audio)}"
    head = await client.head("/audio/" + whole.headers["X-Audio-Cache-Key"])
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == len(audio)


async def test_a_refused_path_is_refused_every_time(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    """Paths already seen skip the check (and the rule lookup): only safe ones are learnt."""
    fake, url = upstream
    client = await make_proxy(url)
    assert client.port is not None
    request = b"GET /v1/audio/%2e%2e/speech HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(3):
        raw = await raw_request(client.port, request)
        assert raw.startswith(b"HTTP/1.1 400"), raw[:200]
        assert b'"field": "path"' in raw
    assert sum(fake.calls.values()) == 0


async def test_the_memo_tells_apart_what_the_headers_decide(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    """Same body, different class header: one is stored, the other refused; the refusal
    is not learnt from, nor the acceptance."""
    _, url = upstream
    client = await make_proxy(url)
    body = speech_body("Dinner is at eight.")
    header = "X-Audio-Cache-Content-Type"
    for _ in range(2):
        good = await client.post("/v1/audio/speech", json=body, headers={header: "room_options"})
        assert good.status == 200
        await good.read()
        bad = await client.post("/v1/audio/speech", json=body, headers={header: "no spaces!"})
        assert bad.status == 400
        assert (await bad.json())["error"]["field"] == f"header:{header}"
    assert good.headers["X-Cache"] == "HIT"
    bypass = await client.post(
        "/v1/audio/speech", json=body, headers={header: "room_options", "Cache-Control": "no-store"}
    )
    assert bypass.headers["X-Cache"] == "BYPASS"
