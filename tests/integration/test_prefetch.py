"""Prefetch through a real proxy and Valkey: jobs, coalescing with clients, keep-warm and
the start-up list. (Request descriptions and job states, pure: tests/unit/test_prefetch.py.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from proxy.app import PROCESSOR
from proxy.core.descriptions import describe
from proxy.core.keys import CacheKey
from proxy.core.routes import build_rules
from tests.support.proxies import service_of
from tests.support.streaming_upstream import StreamingUpstream, serve
from tests.support.waits import eventually, until_prefetched, until_stored

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RULES = build_rules(["openai", "elevenlabs", "get"])
PARAMS = {"model": "tts-1", "voice": "es", "response_format": "wav"}


async def job_done(client: Any, job: str, seconds: float = 10.0) -> dict[str, Any]:
    """The job's report, once it is done."""
    return await until_prefetched(client, job, AUTH, seconds)


def item(text: str, **extra: Any) -> dict[str, Any]:
    return {"route": "openai", "text": text, "params": PARAMS, **extra}


async def test_prefetch_20_phrases_calls_upstream_once_per_missing_one(
    upstream: Any, make_proxy: Any
) -> None:
    fake, url = upstream
    client = await make_proxy(url, env={"ADMIN_TOKEN": TOKEN})
    service = service_of(client)
    phrases = [f"Frase número {i}" for i in range(20)]
    present: dict[str, int] = {}
    for text in phrases[:5]:  # five are cached already, by clients
        response = await client.post("/v1/audio/speech", json={**PARAMS, "input": text})
        await response.read()
        await until_stored(client, response)
        key = CacheKey(response.headers["X-Audio-Cache-Key"])
        info = await service.info(key)
        assert info is not None
        present[key.hex] = info.expires_ms
    assert fake.calls["openai"] == 5
    await asyncio.sleep(0.02)  # so a rewrite would show as a later expiry

    requests = [item(t, content_type="common_responses") for t in phrases]
    response = await client.post(
        "/admin/audio-cache/prefetch", json={"requests": requests}, headers=AUTH
    )
    assert response.status == 202
    started = await response.json()
    assert started["total"] == 20 and response.headers["Location"] == started["status_url"]
    job = await job_done(client, started["job"])
    assert job["results"] == {"present": 5, "stored": 15} and job["errors"] == []
    assert job["upstream_calls"] == 15 and job["done"] == 20
    assert fake.calls["openai"] == 20  # once per missing phrase
    for text in phrases:  # every one is a hit now
        response = await client.post("/v1/audio/speech", json={**PARAMS, "input": text})
        await response.read()
        assert response.headers["X-Cache"] == "HIT", text
        info = await service.info(CacheKey(response.headers["X-Audio-Cache-Key"]))
        assert info is not None
        if info.key in present:  # skipped, not rewritten: TTL not extended
            assert info.expires_ms == present[info.key]
        else:
            assert info.content_class == "common_responses"
    assert fake.calls["openai"] == 20


async def test_prefetch_coalesces_with_itself_and_with_clients(make_proxy: Any) -> None:
    upstream = StreamingUpstream(mode="hang")  # first chunk, then waits for `release`
    async with serve(upstream) as url:
        # Anonymous clients share the prefetched entry at once (with client_auth upstream, a
        # credential is served it once the upstream accepted that credential).
        client = await make_proxy(
            url, env={"ADMIN_TOKEN": TOKEN}, prefetch_concurrency=8, client_auth="none"
        )
        requests = [item("Repetida")] * 4
        response = await client.post(
            "/admin/audio-cache/prefetch", json={"requests": requests}, headers=AUTH
        )
        job_id = (await response.json())["job"]
        await eventually(lambda: upstream.calls > 0)
        # A client asking for the same sentence meanwhile rides on the prefetch's fill.
        answer = asyncio.create_task(
            client.post("/v1/audio/speech", json={**PARAMS, "input": "Repetida"})
        )
        fills = client.app[PROCESSOR].fills
        # Four prefetch items of the same sentence and the client: one fill, five readers.
        await eventually(lambda: any(fill.readers >= 5 for fill in fills.active()))
        upstream.release.set()
        reply = await answer
        assert await reply.read() == upstream.audio("Repetida")
        assert "collapsed" in reply.headers["Cache-Status"]
        job = await job_done(client, job_id)
        assert job["done"] == 4 and job["upstream_calls"] == 1
        assert upstream.calls == 1


async def test_keep_warm_entries_are_rewarmed_before_they_expire(
    upstream: Any, make_proxy: Any
) -> None:
    fake, url = upstream
    client = await make_proxy(
        url,
        env={"ADMIN_TOKEN": TOKEN},
        audio_cache_content_type_ttls={"welcome_message": 2},
        prefetch_keep_warm_interval_seconds=0.1,
        prefetch_keep_warm_margin_seconds=1,
    )
    service = service_of(client)
    requests = [
        item("Bienvenido", content_type="welcome_message", keep_warm=True),
        item("Hasta pronto", content_type="welcome_message"),
    ]
    response = await client.post(
        "/admin/audio-cache/prefetch", json={"requests": requests}, headers=AUTH
    )
    await job_done(client, (await response.json())["job"])
    warm = describe(RULES, item("Bienvenido"))
    cold = describe(RULES, item("Hasta pronto"))
    processor_key = client.app[PROCESSOR].key_for
    warm_key, cold_key = processor_key(warm.speech), processor_key(cold.speech)
    deadline = time.monotonic() + 3.0  # beyond the 2 s TTL
    while time.monotonic() < deadline:  # watched while time passes, every 0.05 s
        assert await service.ttl_ms(warm_key) > 0  # never gone
        await asyncio.sleep(0.05)
    assert await service.ttl_ms(cold_key) < 0  # the other one expired
    assert fake.calls["openai"] >= 3  # two at first, then at least one re-warm
    stats = await (await client.get("/admin/audio-cache/stats", headers=AUTH)).json()
    assert stats["prefetch"]["keep_warm_entries"] == 1


async def test_start_up_list_is_prefetched(upstream: Any, make_proxy: Any, tmp_path: Path) -> None:
    fake, url = upstream
    path = tmp_path / "prefetch.yaml"
    path.write_text(
        "- {route: openai, text: Bienvenido al hotel, params: {model: tts-1, voice: es},"
        " content_type: welcome_message}\n"
        "- route: coqui\n  query: {text: Buenas noches, speaker_id: p1}\n"
        "- route: elevenlabs\n  path_params: {voice_id: v1}\n  body: {text: Hola, model_id: m}\n"
    )
    client = await make_proxy(url, prefetch_file=str(path), client_auth="none")
    service = service_of(client)

    async def three_entries() -> bool:
        return (await service.totals())["entries"] == 3

    await eventually(three_entries, 5.0, interval=0.02, what="the start-up list was not stored")
    assert (fake.calls["openai"], fake.calls["coqui"], fake.calls["elevenlabs"]) == (1, 1, 1)
    response = await client.get("/api/tts?text=Buenas%20noches&speaker_id=p1")
    assert response.headers["X-Cache"] == "HIT"


async def test_prefetch_writes_nothing_when_caching_is_off(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(
        url, env={"ADMIN_TOKEN": TOKEN}, audio_cache_enabled=False, tenant_header="X-Tenant", tenant_header_trusted=True,
        tenants={"acme": {"enabled": False}},
    )  # fmt: skip
    response = await client.post(
        "/admin/audio-cache/prefetch", json={"requests": [item("Hola")]}, headers=AUTH
    )
    job = await job_done(client, (await response.json())["job"])
    assert (
        job["results"] == {"cache_disabled": 1} and job["errors"][0]["reason"] == "cache_disabled"
    )
    assert fake.calls["openai"] == 0
    assert (await service_of(client).totals())["entries"] == 0


async def test_any_replica_reports_a_jobs_progress(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    prefix = f"r{uuid.uuid4().hex[:10]}"
    first = await make_proxy(url, prefix=prefix, env={"ADMIN_TOKEN": TOKEN})
    second = await make_proxy(url, prefix=prefix, env={"ADMIN_TOKEN": TOKEN})
    response = await first.post(
        "/admin/audio-cache/prefetch",
        json={"requests": [item(f"Réplica {i}") for i in range(5)]},
        headers=AUTH,
    )
    job_id = (await response.json())["job"]
    await job_done(first, job_id)
    job = await job_done(second, job_id)  # the other replica answers from Redis
    assert job["results"] == {"stored": 5} and job["upstream_calls"] == 5
    assert fake.calls["openai"] == 5
    missing = await second.get("/admin/audio-cache/prefetch/0123456789abcdef", headers=AUTH)
    assert missing.status == 404
