"""The admin API against a real proxy, a real Valkey and a loopback upstream."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.app import create_admin_app, create_app
from proxy.config.settings import load_settings
from proxy.core.keys import CacheKey
from tests.support.proxies import service_of
from tests.support.servers import served
from tests.support.speech import speech_body
from tests.support.waits import until_stored

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WITH_TOKEN = {"ADMIN_TOKEN": TOKEN}
# Hit counts flushed only when a test says so: a background flush in flight would race it.
EXPLICIT_FLUSH = {**WITH_TOKEN, "AUDIO_CACHE_STATS_FLUSH_SECONDS": "3600"}
SPEECH = speech_body("Bienvenido al hotel", voice="es")
ZERO_KEY = "0" * 64

# Every admin route, called in a way that is valid once authorized.
ROUTES = [
    ("GET", "/admin/audio-cache/stats"),
    ("DELETE", "/admin/audio-cache"),
    ("GET", f"/admin/audio-cache/entry?key={ZERO_KEY}"),
    ("DELETE", f"/admin/audio-cache/entry?key={ZERO_KEY}"),
    ("DELETE", "/admin/audio-cache/entries?voice=nobody"),
    ("POST", "/admin/audio-cache/cleanup"),
    ("POST", "/admin/audio-cache/prefetch"),
    ("GET", "/admin/audio-cache/prefetch/0123456789abcdef"),
    ("GET", "/admin/openapi.json"),
]
PREFETCH_BODY = {
    "requests": [{"route": "openai", "text": "Hola", "params": {"model": "tts-1", "voice": "es"}}]
}


async def speak(client: Any, text: str, **fields: Any) -> str:
    """One speech request through the proxy; returns its cache key."""
    headers = fields.pop("headers", {})
    response = await client.post(
        "/v1/audio/speech", json={**SPEECH, "input": text, **fields}, headers=headers
    )
    assert response.status == 200, await response.text()
    await response.read()
    await until_stored(client, response)
    return str(response.headers["X-Audio-Cache-Key"])


async def call(client: Any, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    if method == "POST" and path.endswith("/prefetch") and not {"json", "data"} & set(kwargs):
        kwargs["json"] = PREFETCH_BODY
    response = await client.request(method, path, **kwargs)
    assert response.content_type == "application/json", await response.text()
    return response.status, await response.json()


# -- who may call ------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_needs_the_token(
    upstream: Any, make_proxy: Any, method: str, path: str
) -> None:
    _, url = upstream
    client = await make_proxy(url, env=WITH_TOKEN)
    status, body = await call(client, method, path)
    assert status == 401 and body["error"]["field"] == "header:Authorization"
    status, body = await call(client, method, path, headers={"Authorization": "Bearer wrong"})
    assert status == 403
    status, body = await call(client, method, path, headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401
    status, body = await call(client, method, path, headers=AUTH)
    assert status in (200, 202, 404), body
    if status == 404:  # absent entry / unknown job: answered by the route, not refused
        assert body["error"]["field"] in ("key", "job")


def remote_is(address: str) -> web.Middleware:
    """Stand-in for the TCP peer: what aiohttp reports as ``request.remote``."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request.clone(remote=address))

    return middleware


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_without_a_token_only_loopback_is_answered(
    upstream: Any, redis_url: str, aiohttp_client: Any, method: str, path: str
) -> None:
    _, url = upstream
    settings = load_settings(
        env={},
        overrides={"upstream_url": url, "audio_cache_key_prefix": f"t{uuid.uuid4().hex[:10]}"},
    )
    app = create_app(settings, redis_url=redis_url)
    app.middlewares.insert(0, remote_is("203.0.113.7"))
    client = await aiohttp_client(app)
    # A forwarded-for header claiming loopback is not believed.
    status, body = await call(
        client, method, path, headers={"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"}
    )
    assert status == 403 and "loopback" in body["error"]["message"]


async def test_without_a_token_loopback_clients_are_answered(
    upstream: Any, make_proxy: Any
) -> None:
    _, url = upstream
    client = await make_proxy(url)
    for method, path in ROUTES:
        status, _ = await call(client, method, path, headers={"X-Forwarded-For": "203.0.113.7"})
        assert status in (200, 202, 404), (method, path)


async def test_admin_paths_are_never_forwarded(make_proxy: Any, aiohttp_client: Any) -> None:
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="upstream")

    upstream_app = web.Application()
    upstream_app.router.add_route("*", "/{tail:.*}", record)
    async with served(upstream_app) as url:
        client = await make_proxy(url)
        for method, path in [("GET", "/admin"), ("GET", "/admin/"), ("POST", "/admin/x/y"),
                             ("GET", "/admin/audio-cache/nope"), ("PUT", "/admin/audio-cache")]:  # fmt: skip
            status, body = await call(client, method, path)
            assert status in (404, 405) and "error" in body
        status, body = await call(client, "DELETE", "/admin/audio-cache/stats")
        assert status == 405 and body["error"]["allowed"] == ["GET"]
        assert (await client.get("/other/thing")).status == 200  # the rest is forwarded
        assert seen == ["/other/thing"]


async def test_separate_admin_port(upstream: Any, redis_url: str, aiohttp_client: Any) -> None:
    fake, url = upstream
    settings = load_settings(
        env=WITH_TOKEN,
        overrides={
            "upstream_url": url,
            "audio_cache_key_prefix": f"t{uuid.uuid4().hex[:10]}",
            "admin_port": 1,  # only its presence matters here; the test server picks a port
        },
    )
    proxy_app = create_app(settings, redis_url=redis_url)
    proxy: TestClient[web.Request, web.Application] = await aiohttp_client(proxy_app)
    admin: TestClient[web.Request, web.Application] = await aiohttp_client(
        create_admin_app(proxy_app)
    )
    key = await speak(proxy, "Hola desde el puerto principal")
    status, _ = await call(proxy, "GET", "/admin/audio-cache/stats", headers=AUTH)
    assert status == 404
    assert (await admin.get("/admin/audio-cache/stats")).status == 401
    status, body = await call(admin, "GET", f"/admin/audio-cache/entry?key={key}", headers=AUTH)
    assert status == 200 and body["key"] == key
    status, body = await call(admin, "GET", "/v1/audio/speech", headers=AUTH)
    assert status == 404
    assert fake.calls["openai"] == 1


# -- stats -------------------------------------------------------------------------------


async def test_stats_from_counters(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    client = await make_proxy(
        url, env=EXPLICIT_FLUSH, tenant_header="X-Tenant", tenant_header_trusted=True, audio_cache_max_size_mb=1,
        tenants={"globex": {"quota_mb": 2, "namespace": "shared"}},
    )  # fmt: skip
    await speak(client, "Bienvenido", headers={"X-Audio-Cache-Content-Type": "welcome_message"})
    await speak(client, "Habitaciones", headers={"X-Tenant": "acme"})
    await speak(client, "Bienvenido", headers={"X-Audio-Cache-Content-Type": "welcome_message"})
    await speak(client, "Habitaciones", headers={"X-Tenant": "acme"})
    await service_of(client).flush_counters()  # hit counts are batched off the hit path
    status, stats = await call(client, "GET", "/admin/audio-cache/stats", headers=AUTH)
    assert status == 200
    assert stats["entries"] == 2
    size = stats["size"]
    # Below the compression threshold: stored = original + a small header per entry.
    assert 8000 < size["original_bytes"] < size["stored_bytes"] < size["original_bytes"] + 100
    assert size["max_bytes"] == 1024 * 1024
    assert size["percent_used"] == round(100 * size["stored_bytes"] / (1024 * 1024), 2)
    assert stats["requests"]["lifetime"] == {"hits": 2, "misses": 2, "hit_ratio": 0.5}
    assert stats["requests"]["since_start"]["hits"] == 2
    assert stats["content_types"]["welcome_message"] == {
        "entries": 1, "bytes": size["stored_bytes"] // 2, "hits": 1, "ttl_seconds": 7 * 86400,
    }  # fmt: skip
    assert stats["content_types"]["default"]["hits"] == 1
    assert (stats["tenants"]["acme"]["entries"], stats["tenants"]["acme"]["hits"]) == (1, 1)
    assert stats["tenants"]["acme"]["namespace"] == "isolated"
    assert stats["tenants"]["globex"] == {
        "entries": 0, "bytes": 0, "hits": 0, "quota_bytes": 2 * 1024 * 1024,
        "percent_of_quota": 0.0, "namespace": "shared", "enabled": True, "configured": True,
    }  # fmt: skip
    cleanup = stats["cleanup"]
    assert (cleanup["threshold_percent"], cleanup["target_percent"]) == (95, 80)
    assert cleanup["runs"] == 0 and cleanup["last_run"] is None
    assert set(stats["compression"]) == {
        "enabled", "threshold_kb", "compression_level", "compressed_entries",
        "compressed_size_mb", "original_size_mb", "space_saved_mb", "compression_ratio",
    }  # fmt: skip
    await call(
        client, "POST", "/admin/audio-cache/cleanup?force=true&target_percent=0", headers=AUTH
    )
    _, stats = await call(client, "GET", "/admin/audio-cache/stats", headers=AUTH)
    assert stats["entries"] == 0 and stats["cleanup"]["runs"] == 1
    assert stats["cleanup"]["entries_removed"] == 2
    assert stats["cleanup"]["last_run"]["result"] == "ok"
    assert stats["removals"]["evicted"] == 2


# -- clearing and purging ---------------------------------------------------------------


async def test_clear_touches_only_this_caches_prefix(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    mine = await make_proxy(url, env=WITH_TOKEN)
    other = await make_proxy(url, env=WITH_TOKEN)
    for i in range(5):
        await speak(mine, f"mío {i}")
    kept = await speak(other, "de otro")
    redis = service_of(mine).redis
    await redis.set("unrelated:key", "stays")
    status, body = await call(mine, "DELETE", "/admin/audio-cache", headers=AUTH)
    assert (status, body["deleted"]) == (200, 5)
    assert (await service_of(mine).totals())["entries"] == 0
    assert await service_of(other).info(CacheKey(kept)) is not None
    assert await redis.get("unrelated:key") == b"stays"
    status, body = await call(mine, "DELETE", "/admin/audio-cache", headers=AUTH)
    assert (status, body["deleted"]) == (200, 0)


async def test_clear_one_tenant(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    client = await make_proxy(
        url, env=WITH_TOKEN, tenant_header="X-Tenant", tenant_header_trusted=True
    )
    a = [await speak(client, f"acme {i}", headers={"X-Tenant": "acme"}) for i in range(3)]
    b = await speak(client, "globex", headers={"X-Tenant": "globex"})
    status, body = await call(client, "DELETE", "/admin/audio-cache?tenant=acme", headers=AUTH)
    assert (status, body["deleted"], body["tenant"]) == (200, 3, "acme")
    service = service_of(client)
    assert [await service.info(CacheKey(k)) for k in a] == [None] * 3
    assert await service.info(CacheKey(b)) is not None


# What each entry is: (text, voice, model, tenant, content type); route openai unless coqui.
ENTRIES = [
    ("uno", "es", "tts-1", "acme", "welcome_message"),
    ("dos", "en", "tts-1", "globex", "default"),
    ("tres", "es", "tts-1-hd", "globex", "room_options"),
    ("cuatro", "en", "tts-1-hd", "acme", "welcome_message"),
]


@pytest.mark.parametrize(
    "selector",
    [{"voice": "es"}, {"model": "tts-1-hd"}, {"tenant": "acme"},
     {"content_type": "welcome_message"}, {"route": "coqui"},
     {"voice": "en", "tenant": "acme"}],
)  # fmt: skip
async def test_purge_by_selector_removes_only_matches(
    upstream: Any, make_proxy: Any, selector: dict[str, str]
) -> None:
    _, url = upstream
    client = await make_proxy(
        url, env=WITH_TOKEN, tenant_header="X-Tenant", tenant_header_trusted=True
    )
    keys: dict[str, dict[str, str]] = {}
    for text, voice, model, tenant, ctype in ENTRIES:
        headers = {"X-Tenant": tenant, "X-Audio-Cache-Content-Type": ctype}
        key = await speak(client, text, voice=voice, model=model, headers=headers)
        keys[key] = {"voice": voice, "model": model, "tenant": tenant, "content_type": ctype,
                     "route": "openai"}  # fmt: skip
    response = await client.get("/api/tts?text=cinco&speaker_id=es&language_id=es")
    await response.read()
    await until_stored(client, response)
    keys[response.headers["X-Audio-Cache-Key"]] = {
        "voice": "es", "model": "es", "tenant": "", "content_type": "default", "route": "coqui"
    }  # fmt: skip
    expected_gone = {
        k for k, labels in keys.items() if all(labels[d] == v for d, v in selector.items())
    }
    assert 0 < len(expected_gone) < len(keys)  # the case means something

    query = "&".join(f"{k}={quote(v)}" for k, v in selector.items())
    status, body = await call(client, "DELETE", f"/admin/audio-cache/entries?{query}", headers=AUTH)
    assert status == 200 and body["deleted"] == len(expected_gone)
    service = service_of(client)
    for key in keys:
        present = await service.info(CacheKey(key)) is not None
        assert present == (key not in expected_gone), (key, keys[key])
    assert (await service.totals())["entries"] == len(keys) - len(expected_gone)


# -- one entry ---------------------------------------------------------------------------


async def test_lookup_leaves_ttl_hits_and_recency_alone(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    client = await make_proxy(url, env=EXPLICIT_FLUSH)
    key = await speak(client, "Nuestro horario de check-in")
    await speak(client, "Nuestro horario de check-in")  # one hit
    service = service_of(client)
    await service.flush_counters()  # hit count and last access written
    before = await service.info(CacheKey(key))
    assert before is not None and before.hits == 1
    ttl_before = await service.redis.pttl(service.keyspace.entry(CacheKey(key)))
    for _ in range(3):
        status, body = await call(
            client, "GET", f"/admin/audio-cache/entry?key={key}", headers=AUTH
        )
        assert status == 200
    assert body["hits"] == 1 and body["key"] == key and body["voice"] == "es"
    assert body["size"] < body["stored_size"] < body["size"] + 100 and body["codec"] == "none"
    assert body["content_type"] == "default" and body["route"] == "openai"
    assert 0 < body["ttl_seconds"] <= 86400
    await service.flush_counters()
    after = await service.info(CacheKey(key))
    assert after is not None
    assert (after.hits, after.last_access_ms, after.expires_ms) == (
        before.hits, before.last_access_ms, before.expires_ms,
    )  # fmt: skip
    assert await service.redis.pttl(service.keyspace.entry(CacheKey(key))) <= ttl_before
    # A real hit does move them (so the assertions above can fail).
    await speak(client, "Nuestro horario de check-in")
    await service.flush_counters()
    moved = await service.info(CacheKey(key))
    assert moved is not None and moved.hits == 2
    assert moved.last_access_ms > before.last_access_ms


async def test_entry_by_request_description(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    client = await make_proxy(
        url, env=WITH_TOKEN, tenant_header="X-Tenant", tenant_header_trusted=True
    )
    key = await speak(client, "Hasta luego")
    tenant_key = await speak(client, "Hasta luego", headers={"X-Tenant": "acme"})
    assert key != tenant_key
    described = {"route": "openai", "body": json.dumps({**SPEECH, "input": "  Hasta   luego "})}
    status, body = await call(
        client, "GET", "/admin/audio-cache/entry", params=described, headers=AUTH
    )
    assert (status, body["key"]) == (200, key)
    status, body = await call(
        client,
        "GET",
        "/admin/audio-cache/entry",
        params={**described, "tenant": "acme"},
        headers=AUTH,
    )
    assert (status, body["key"], body["tenant"]) == (200, tenant_key, "acme")
    # GET-style routes are described by their query; ElevenLabs' by its path.
    coqui = await client.get("/api/tts?text=Adios&speaker_id=p1")
    await coqui.read()
    await until_stored(client, coqui)
    status, body = await call(
        client, "GET", "/admin/audio-cache/entry",
        params={"route": "coqui", "query": "speaker_id=p1&text=Adios"}, headers=AUTH,
    )  # fmt: skip
    assert (status, body["key"]) == (200, coqui.headers["X-Audio-Cache-Key"])
    eleven = await client.post("/v1/text-to-speech/v42", json={"text": "Hola", "model_id": "m"})
    await eleven.read()
    await until_stored(client, eleven)
    status, body = await call(
        client, "GET", "/admin/audio-cache/entry",
        params={"route": "elevenlabs", "path": "/v1/text-to-speech/v42",
                "body": '{"model_id": "m", "text": "Hola"}'}, headers=AUTH,
    )  # fmt: skip
    assert (status, body["key"]) == (200, eleven.headers["X-Audio-Cache-Key"])

    status, body = await call(
        client, "DELETE", "/admin/audio-cache/entry", params=described, headers=AUTH
    )
    assert (status, body) == (200, {"deleted": 1, "key": key})
    status, body = await call(
        client, "DELETE", "/admin/audio-cache/entry", params=described, headers=AUTH
    )
    assert status == 404 and body["error"]["key"] == key
    status, body = await call(client, "GET", f"/admin/audio-cache/entry?key={key}", headers=AUTH)
    assert status == 404 and body["error"]["field"] == "key"
    assert await service_of(client).info(CacheKey(tenant_key)) is not None


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/admin/audio-cache/entry", "key"),
        ("GET", "/admin/audio-cache/entry?key=ABC", "key"),
        ("GET", f"/admin/audio-cache/entry?key={'A' * 64}", "key"),
        ("DELETE", f"/admin/audio-cache/entry?key={ZERO_KEY}&route=openai", "route"),
        ("GET", "/admin/audio-cache/entry?route=nope", "route"),
        ("GET", "/admin/audio-cache/entry?route=openai&body=%7Boops", "body"),
        ("GET", "/admin/audio-cache/entry?route=openai&body=%5B1%5D", "body"),
        ("GET", "/admin/audio-cache/entry?route=openai&body=%7B%22input%22%3A3%7D", "json:input"),
        ("GET", "/admin/audio-cache/entry?route=elevenlabs&body=%7B%7D", "path_params"),
        ("GET", "/admin/audio-cache/entry?route=openai&body=%7B%7D&headers=x", "headers"),
        ("GET", "/admin/audio-cache/entry?route=openai&body=%7B%7D&tenant=a:b", "tenant"),
        ("GET", f"/admin/audio-cache/entry?key={ZERO_KEY}&colour=red", "colour"),
        ("DELETE", "/admin/audio-cache?tennant=acme", "tennant"),
        ("DELETE", "/admin/audio-cache?tenant=", "tenant"),
        ("DELETE", "/admin/audio-cache/entries", "voice"),
        ("DELETE", "/admin/audio-cache/entries?voice=", "voice"),
        ("DELETE", "/admin/audio-cache/entries?speaker=x", "speaker"),
        ("DELETE", "/admin/audio-cache/entries?voice=a&voice=b", "voice"),
        ("GET", "/admin/audio-cache/stats?x=1", "x"),
        ("GET", "/admin/audio-cache/prefetch/not-a-job", "job"),
        ("POST", "/admin/audio-cache/cleanup?tenant=acme", "tenant"),
        ("POST", "/admin/audio-cache/cleanup?bogus=1", "bogus"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    upstream: Any, make_proxy: Any, method: str, path: str, field: str
) -> None:
    _, url = upstream
    client = await make_proxy(url, env=WITH_TOKEN)
    await speak(client, "nada")
    status, body = await call(client, method, path, headers=AUTH)
    assert status == 400, body
    assert body["error"]["field"] == field, body
    assert (await service_of(client).totals())["entries"] == 1  # nothing was purged


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{oops", "body"),
        (b"[]", "body"),
        (b'{"requests": []}', "requests"),
        (b'{"requests": [1]}', "requests[0]"),
        (b'{"requests": [{"route": "nope", "text": "x"}]}', "requests[0].route"),
        (b'{"requests": [{"text": "x"}]}', "requests[0].route"),
        (b'{"requests": [{"route": "openai", "text": 3}]}', "requests[0].text"),
        (b'{"requests": [{"route": "openai", "body": {"voice": "es"}}]}', "requests[0].json:input"),
        (
            b'{"requests": [{"route": "openai", "text": "x", "keep_warm": "yes"}]}',
            "requests[0].keep_warm",
        ),
        (
            b'{"requests": [{"route": "openai", "text": "x", "content_type": "Bad Type"}]}',
            "requests[0].content_type",
        ),
        (
            b'{"requests": [{"route": "openai", "text": "x", "tenant": "a b"}]}',
            "requests[0].tenant",
        ),
        (b'{"requests": [{"route": "openai", "text": "x", "colour": 1}]}', "requests[0].colour"),
        (b'{"requests": [{"route": "openai", "text": "x"}], "extra": 1}', "body"),
    ],
)
async def test_bad_prefetch_bodies(upstream: Any, make_proxy: Any, body: bytes, field: str) -> None:
    fake, url = upstream
    client = await make_proxy(url, env=WITH_TOKEN)
    status, answer = await call(
        client, "POST", "/admin/audio-cache/prefetch", data=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )  # fmt: skip
    assert status == 400 and answer["error"]["field"] == field, answer
    assert sum(fake.calls.values()) == 0


async def test_redis_down_is_503_not_500(upstream: Any, aiohttp_client: Any) -> None:
    from proxy.store.embedded import free_port

    _, url = upstream
    settings = load_settings(env=WITH_TOKEN, overrides={"upstream_url": url})
    client = await aiohttp_client(
        create_app(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    )
    for method, path in ROUTES[:5]:
        status, body = await call(client, method, path, headers=AUTH)
        assert status == 503, (method, path, body)


async def test_cleanup_route_enforces_a_tenant_quota(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    client = await make_proxy(
        url, env=WITH_TOKEN, tenant_header="X-Tenant", tenant_header_trusted=True,
        tenants={"acme": {"quota_mb": 10 / 1024}},  # 10 KB; answers are ~4 KB
        audio_cache_sweep_interval_seconds=30,  # the background check stays out of the way
    )  # fmt: skip
    acme = [await speak(client, f"acme {i}", headers={"X-Tenant": "acme"}) for i in range(3)]
    other = await speak(client, "globex", headers={"X-Tenant": "globex"})
    status, report = await call(
        client, "POST", "/admin/audio-cache/cleanup?tenant=acme", headers=AUTH
    )
    assert status == 200 and (report["tenant"], report["result"]) == ("acme", "ok")
    assert report["target_bytes"] == int(0.8 * 10 * 1024)
    service = service_of(client)
    assert (await service.totals())["tenant:acme:bytes"] <= report["target_bytes"]
    assert sum([await service.info(CacheKey(k)) is None for k in acme]) == 1  # 12 -> 8 KB
    assert await service.info(CacheKey(other)) is not None


async def test_oversized_prefetch_bodies_are_a_413(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    client = await make_proxy(url, env=WITH_TOKEN, max_request_body_kb=4, prefetch_max_requests=2)
    big = {"requests": [{"route": "openai", "text": "x" * 8000}]}
    status, body = await call(client, "POST", "/admin/audio-cache/prefetch", json=big, headers=AUTH)
    assert status == 413 and body["error"]["field"] == "body"
    many = {"requests": [{"route": "openai", "text": f"t{i}"} for i in range(3)]}
    status, body = await call(
        client, "POST", "/admin/audio-cache/prefetch", json=many, headers=AUTH
    )
    assert status == 400 and body["error"]["field"] == "requests"
    assert "prefetch_max_requests" in body["error"]["message"]
