"""Per-tenant policies: pure rules, then isolation, TTLs and quotas through a real proxy."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.settings import ConfigError, load_settings
from proxy.core.keys import CacheKey
from proxy.core.tenants import (
    BadTenant,
    PolicyError,
    TenantPolicy,
    Tenants,
    api_key_tenant,
    parse_policies,
)

from .conftest import eventually, service_of, until_stored

SPEECH = {
    "model": "tts-1",
    "input": "Su habitación es la 204",
    "voice": "es",
    "response_format": "wav",
}
TABLE = {"welcome_message": 7 * 86400}


# -- pure rules ------------------------------------------------------------------------


def test_identify_by_header_then_api_key() -> None:
    tenants = Tenants(header="X-Tenant", api_key_header="Authorization")
    assert tenants.identify({"x-tenant": " acme "}) == "acme"
    hashed = tenants.identify({"authorization": "Bearer sk-1"})
    assert hashed == api_key_tenant("Bearer sk-1") and hashed.startswith("key-")
    assert "sk-1" not in hashed and hashed != api_key_tenant("Bearer sk-2")
    assert tenants.identify({}) == ""
    with pytest.raises(BadTenant) as err:
        tenants.identify({"x-tenant": "a:b"})
    assert err.value.field == "header:X-Tenant"


def test_namespaces_ttls_and_the_default_policy() -> None:
    tenants = Tenants(
        header="X-Tenant",
        policies={
            "shared1": TenantPolicy(namespace="shared"),
            "acme": TenantPolicy(ttls={"room_options": 60}, ttl_seconds=600, quota_mb=1),
        },
        default=TenantPolicy(quota_mb=2),
    )
    assert tenants.namespace("") == "" and tenants.namespace("shared1") == ""
    assert tenants.namespace("acme") == "tenant:acme"
    assert tenants.namespace("stranger") == "tenant:stranger"  # isolated by default
    assert tenants.ttl_for("acme", "room_options", TABLE, 86400) == 60
    assert tenants.ttl_for("acme", "welcome_message", TABLE, 86400) == 7 * 86400
    assert tenants.ttl_for("acme", "default", TABLE, 86400) == 600
    assert tenants.ttl_for("stranger", "default", TABLE, 86400) == 86400
    assert tenants.quota_bytes("acme") == 1024 * 1024
    assert tenants.quota_bytes("stranger") == 2 * 1024 * 1024
    assert tenants.quota_bytes("") is None


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ([1], "tenants: expected a mapping"),
        ({"a:b": {}}, "tenant id"),
        ({"acme": {"namespace": "private"}}, "tenants.acme.namespace"),
        ({"acme": {"enabled": "yes"}}, "tenants.acme.enabled"),
        ({"acme": {"quota_mb": 0}}, "tenants.acme.quota_mb"),
        ({"acme": {"ttls": {"welcome_message": 1.5}}}, "tenants.acme.ttls.welcome_message"),
        ({"acme": {"ttls": {"Bad Name": 10}}}, "tenants.acme.ttls"),
        ({"acme": {"colour": "red"}}, "unknown key"),
    ],
)
def test_bad_policies_name_the_field(raw: Any, needle: str) -> None:
    with pytest.raises(PolicyError, match=needle):
        parse_policies(raw)
    with pytest.raises(ConfigError, match=needle):
        load_settings(env={}, overrides={"tenants": raw})


def test_policies_from_yaml_and_environment() -> None:
    env = {
        "TENANTS": '{"acme": {"namespace": "shared", "quota_mb": 5}}',
        "TENANT_DEFAULT_POLICY": '{"enabled": false}',
        "TENANT_HEADER": "X-Tenant",
    }
    settings = load_settings(env=env)
    assert settings.tenants["acme"] == TenantPolicy(namespace="shared", quota_mb=5.0)
    assert settings.tenant_default_policy.enabled is False
    assert settings.public()["tenants"]["acme"]["quota_mb"] == 5.0
    with pytest.raises(ConfigError, match="tenant_header"):
        load_settings(env={"TENANT_HEADER": "X Tenant"})


# -- through the proxy -----------------------------------------------------------------


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
    client = await make_proxy(url, tenant_header="X-Tenant")
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
        url, tenant_header="X-Tenant", tenants={"acme": shared, "globex": shared}
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
    client = await make_proxy(url, tenant_header="X-Tenant", tenants={"acme": {"enabled": False}})
    for _ in range(2):
        response = await speak(client, "acme")
        assert response.status == 200 and response.headers["X-Cache"] == "BYPASS"
    assert fake.calls["openai"] == 2
    assert (await service_of(client).totals())["entries"] == 0


async def test_bad_tenant_header_is_a_400(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url, tenant_header="X-Tenant")
    response = await client.post("/v1/audio/speech", json=SPEECH, headers={"X-Tenant": "a/b:c"})
    assert response.status == 400
    assert (await response.json())["error"]["field"] == "header:X-Tenant"
    assert fake.calls["openai"] == 0


async def test_tenant_ttl_overrides(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    client = await make_proxy(
        url, tenant_header="X-Tenant",
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
    client = await make_proxy(url, tenant_header="X-Tenant", tenants={"acme": {"quota_mb": quota}})
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
