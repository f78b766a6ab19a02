"""Per-tenant cache policies: who a request belongs to, and what the cache may do for it.

Pure logic. A tenant is named by a configurable request header, or by a hash of the
client's API key. Each tenant's policy says whether it is cached at all, TTL overrides per
content type, a size quota that cleanup enforces, and whether its entries are isolated in
their own key namespace (the default: a tenant's text may hold personal data) or shared
with every other shared tenant. Unknown tenants get the default policy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .segments import MODES as SEGMENT_MODES

# No ':' — tenant ids become parts of Redis key names and counter names split on ':'.
TENANT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CONTENT_TYPE = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,63}$")
NAMESPACES = ("isolated", "shared")
_POLICY_FIELDS = (
    "enabled",
    "namespace",
    "quota_mb",
    "ttl_seconds",
    "ttls",
    "requests_per_minute",
    "upstream_characters_per_day",
    "audio_cache_segments",
)


class PolicyError(ValueError):
    """A tenant policy in the configuration is malformed; the message names the field."""


class BadTenant(ValueError):
    """A request names its tenant in a way that cannot be used."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class TenantRefused(BadTenant):
    """A request claims a tenant its caller cannot be trusted with."""


@dataclass(frozen=True)
class TenantPolicy:
    """What the cache does for one tenant."""

    enabled: bool = True
    namespace: str = "isolated"
    quota_mb: float | None = None
    ttl_seconds: int | None = None
    ttls: Mapping[str, int] = field(default_factory=dict)
    requests_per_minute: int | None = None
    upstream_characters_per_day: int | None = None
    audio_cache_segments: str | None = None  # None: the route's or the cache's choice

    @property
    def quota_bytes(self) -> int | None:
        return None if self.quota_mb is None else int(self.quota_mb * 1024 * 1024)

    def to_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "namespace": self.namespace,
            "quota_mb": self.quota_mb,
            "ttl_seconds": self.ttl_seconds,
            "ttls": dict(self.ttls),
            "requests_per_minute": self.requests_per_minute,
            "upstream_characters_per_day": self.upstream_characters_per_day,
            "audio_cache_segments": self.audio_cache_segments,
        }


# Requests that name no tenant: the cache's own settings, the common namespace.
NO_TENANT = TenantPolicy(namespace="shared")


def _number(where: str, value: Any, *, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{where}: expected a number, got {value!r}")
    if integer and isinstance(value, float) and not value.is_integer():
        raise PolicyError(f"{where}: expected an integer, got {value!r}")
    if value <= 0:
        raise PolicyError(f"{where}: must be greater than 0, got {value!r}")
    return value


def parse_policy(raw: Any, where: str) -> TenantPolicy:
    """A policy from its YAML form; raises PolicyError naming the bad field."""
    if raw is None:
        return TenantPolicy()
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: expected a mapping with keys {list(_POLICY_FIELDS)}")
    unknown = sorted(set(map(str, raw)) - set(_POLICY_FIELDS))
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {unknown}; allowed: {list(_POLICY_FIELDS)}")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise PolicyError(f"{where}.enabled: expected true or false, got {enabled!r}")
    namespace = raw.get("namespace", "isolated")
    if namespace not in NAMESPACES:
        raise PolicyError(
            f"{where}.namespace: must be one of {list(NAMESPACES)}, got {namespace!r}"
        )
    limits = {
        name: None
        if raw.get(name) is None
        else int(_number(f"{where}.{name}", raw[name], integer=True))
        for name in ("requests_per_minute", "upstream_characters_per_day")
    }
    segments = raw.get("audio_cache_segments")
    if segments is not None and segments not in SEGMENT_MODES:
        raise PolicyError(
            f"{where}.audio_cache_segments: must be one of {list(SEGMENT_MODES)}, got {segments!r}"
        )
    quota = raw.get("quota_mb")
    ttl = raw.get("ttl_seconds")
    ttls_raw = raw.get("ttls") or {}
    if not isinstance(ttls_raw, Mapping):
        raise PolicyError(f"{where}.ttls: expected a mapping of content type to seconds")
    ttls: dict[str, int] = {}
    for name, seconds in ttls_raw.items():
        if not isinstance(name, str) or not _CONTENT_TYPE.match(name):
            raise PolicyError(
                f"{where}.ttls: content type {name!r} must match {_CONTENT_TYPE.pattern}"
            )
        ttls[name] = int(_number(f"{where}.ttls.{name}", seconds, integer=True))
    return TenantPolicy(
        enabled=enabled,
        namespace=namespace,
        quota_mb=None
        if quota is None
        else float(_number(f"{where}.quota_mb", quota, integer=False)),
        ttl_seconds=None
        if ttl is None
        else int(_number(f"{where}.ttl_seconds", ttl, integer=True)),
        ttls=ttls,
        audio_cache_segments=segments,
        **limits,
    )


def parse_policies(raw: Any, where: str = "tenants") -> dict[str, TenantPolicy]:
    """``{tenant id: policy}`` from its YAML form."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: expected a mapping of tenant id to policy")
    out: dict[str, TenantPolicy] = {}
    for tenant, policy in raw.items():
        if not isinstance(tenant, str) or not TENANT_ID.match(tenant):
            raise PolicyError(f"{where}: tenant id {tenant!r} must match {TENANT_ID.pattern}")
        out[tenant] = parse_policy(policy, f"{where}.{tenant}")
    return out


def api_key_tenant(value: str) -> str:
    """A stable tenant id for an API key that never reveals the key."""
    digest = hashlib.sha256(value.strip().encode("utf-8", "surrogateescape")).hexdigest()
    return "key-" + digest[:16]


@dataclass(frozen=True)
class Tenants:
    """Identifies a request's tenant and answers with its policy."""

    header: str | None = None
    api_key_header: str | None = None
    policies: Mapping[str, TenantPolicy] = field(default_factory=dict)
    default: TenantPolicy = field(default_factory=TenantPolicy)

    def identify(self, headers: Mapping[str, str]) -> str:
        """The tenant of a request (headers with lower-case names); "" when none is named."""
        if self.header:
            value = headers.get(self.header.lower())
            if value is not None:
                return self.check_id(value.strip(), field=f"header:{self.header}")
        if self.api_key_header:
            value = headers.get(self.api_key_header.lower())
            if value:
                return api_key_tenant(value)
        return ""

    @staticmethod
    def check_id(tenant: str, *, field: str = "tenant") -> str:
        if not TENANT_ID.match(tenant):
            raise BadTenant(field, f"tenant id must match {TENANT_ID.pattern}")
        return tenant

    def policy(self, tenant: str) -> TenantPolicy:
        if not tenant:
            return NO_TENANT
        return self.policies.get(tenant, self.default)

    def isolated(self, tenant: str) -> bool:
        """Whether the tenant's entries are its own (not shared with other tenants)."""
        return bool(tenant) and self.policy(tenant).namespace == "isolated"

    def namespace(self, tenant: str) -> str:
        """The key namespace of the tenant's entries: its own when isolated, else common."""
        if not tenant or self.policy(tenant).namespace == "shared":
            return ""
        return f"tenant:{tenant}"

    def ttl_for(
        self, tenant: str, content_class: str, table: Mapping[str, int], default: int
    ) -> int:
        """The tenant's TTL for a content type, then the cache's ``table``, then the
        tenant's default, then the cache's ``default``."""
        policy = self.policy(tenant)
        if content_class in policy.ttls:
            return policy.ttls[content_class]
        if content_class in table:
            return table[content_class]
        return policy.ttl_seconds if policy.ttl_seconds is not None else default

    def quota_bytes(self, tenant: str) -> int | None:
        return self.policy(tenant).quota_bytes if tenant else None
