"""Per-tenant policies as pure rules: who a request belongs to, its namespace, TTLs and
quota, and policies read from YAML and the environment."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.settings import ConfigError, load_settings
from proxy.core.tenants import (
    BadTenant,
    PolicyError,
    TenantPolicy,
    Tenants,
    api_key_tenant,
    parse_policies,
)

TABLE = {"welcome_message": 7 * 86400}


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
