"""Per-tenant isolation, TTLs and quotas through a real proxy and Valkey. (The pure rules:
tests/unit/test_tenants.py.)"""

from __future__ import annotations

from typing import Any

from proxy.core.keys import CacheKey
from proxy.core.tenants import api_key_tenant
from tests.support.proxies import service_of
from tests.support.speech import speech_body
from tests.support.waits import eventually, until_stored

SPEECH = speech_body("Su habitación es la 204", voice="es")


async def speak(client: Any, tenant: str | None, text: str = SPEECH["input"]) -> Any:
    headers = {"X-Tenant": tenant} if tenant is not None else {}
    response = await client.post(
        "/v1/audio/speech", json={**SPEECH, "input": text}, headers=headers
    )
    await response.read()
    await until_stored(client, response)
    return response


async def test_isolated_tenants_get_their_own_entries(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url, tenant_header="X-Tenant", tenant_header_trusted=True)
    a, b = await speak(client, "acme"), await speak(client, "globex")
    assert a.headers["X-Audio-Cache-Key"] != b.headers["X-Audio-Cache-Key"]
    assert (a.headers["X-Cache"], b.headers["X-Cache"]) == ("MISS", "MISS")
    assert (await speak(client, "acme")).headers["X-Cache"] == "HIT"
    assert (await speak(client, None)).headers["X-Cache"] == "MISS"  # no tenant: common pool
    totals = await service_of(client).totals()
    assert totals["entries"] == 3 and fake.calls["openai"] == 3
    assert totals["tenant:acme:entries"] == totals["tenant:globex:entries"] == 1


async def test_shared_tenants_share_one_entry(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    shared = {"namespace": "shared"}
    client = await make_proxy(
        url,
        tenant_header="X-Tenant",
        tenant_header_trusted=True,
        tenants={"acme": shared, "globex": shared},
    )
    a, b = await speak(client, "acme"), await speak(client, "globex")
    assert a.headers["X-Audio-Cache-Key"] == b.headers["X-Audio-Cache-Key"]
    assert (a.headers["X-Cache"], b.headers["X-Cache"]) == ("MISS", "HIT")
    assert (await speak(client, None)).headers["X-Cache"] == "HIT"
    assert (await service_of(client).totals())["entries"] == 1
    assert fake.calls["openai"] == 1


async def test_api_key_hash_names_the_tenant(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url, tenant_api_key_header="Authorization")
    for key in ("Bearer sk-a", "Bearer sk-b", "Bearer sk-a"):
        response = await client.post(
            "/v1/audio/speech", json=SPEECH, headers={"Authorization": key}
        )
        await response.read()
        await until_stored(client, response)
    assert fake.calls["openai"] == 2
    totals = await service_of(client).totals()
    assert totals[f"tenant:{api_key_tenant('Bearer sk-a')}:entries"] == 1


async def test_disabled_tenant_is_passed_through(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(
        url,
        tenant_header="X-Tenant",
        tenant_header_trusted=True,
        tenants={"acme": {"enabled": False}},
    )
    for _ in range(2):
        response = await speak(client, "acme")
        assert response.status == 200 and response.headers["X-Cache"] == "BYPASS"
    assert fake.calls["openai"] == 2
    assert (await service_of(client).totals())["entries"] == 0


async def test_bad_tenant_header_is_a_400(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url, tenant_header="X-Tenant", tenant_header_trusted=True)
    response = await client.post("/v1/audio/speech", json=SPEECH, headers={"X-Tenant": "a/b:c"})
    assert response.status == 400
    assert (await response.json())["error"]["field"] == "header:X-Tenant"
    assert fake.calls["openai"] == 0


async def test_tenant_ttl_overrides(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    client = await make_proxy(
        url, tenant_header="X-Tenant", tenant_header_trusted=True,
        tenants={"acme": {"ttl_seconds": 600, "ttls": {"room_options": 120}}},
    )  # fmt: skip
    service = service_of(client)

    async def ttl_of(tenant: str, content_type: str | None, text: str) -> float:
        headers = {"X-Tenant": tenant}
        if content_type:
            headers["X-Audio-Cache-Content-Type"] = content_type
        r = await client.post("/v1/audio/speech", json={**SPEECH, "input": text}, headers=headers)
        await r.read()
        await until_stored(client, r)
        return await service.ttl_ms(CacheKey(r.headers["X-Audio-Cache-Key"])) / 1000

    assert 110 < await ttl_of("acme", "room_options", "a") <= 120
    assert 590 < await ttl_of("acme", None, "b") <= 600
    assert 7 * 86400 - 10 < await ttl_of("acme", "welcome_message", "c") <= 7 * 86400
    assert 86390 < await ttl_of("globex", None, "d") <= 86400


async def test_quota_is_enforced_by_cleanup_for_that_tenant_only(
    upstream: Any, make_proxy: Any
) -> None:
    _, url = upstream
    quota = 20 / 1024  # 20 KB; each answer is ~4 KB
    client = await make_proxy(
        url,
        tenant_header="X-Tenant",
        tenant_header_trusted=True,
        tenants={"acme": {"quota_mb": quota}},
    )
    service = service_of(client)
    for i in range(4):
        await speak(client, "globex", f"globex {i}")
    for i in range(8):
        assert (await speak(client, "acme", f"acme {i}")).status == 200

    async def acme_within_target() -> bool:
        return (await service.totals())["tenant:acme:bytes"] <= 0.8 * 20 * 1024

    await eventually(acme_within_target)
    totals = await service.totals()
    assert totals["tenant:acme:entries"] >= 1
    assert totals["tenant:globex:entries"] == 4  # the other tenant is untouched
    assert totals["evicted"] == 8 - totals["tenant:acme:entries"]
