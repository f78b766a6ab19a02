"""Client keys: who may use the proxy, under which tenant, with which limits and rights.

Pure logic. Keys live in a YAML file as the sha256 of what the client sends, never in plain
text::

    keys:
      - sha256: 9f86d08188…            # hex sha256 of the key the client sends
        name: front-desk               # optional; how usage and metrics name it
        tenant: hotel-a                # optional; the key's tenant
        requests_per_minute: 600       # optional limits
        upstream_characters_per_day: 200000
        may_classify: false            # optional rights (default false)
        may_refresh: false

A client presents its key as ``Authorization: Bearer <key>`` or in the header its SDK uses
(``xi-api-key`` for ElevenLabs, ``x-api-key`` for Cartesia, …).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .tenants import TENANT_ID

# The headers SDKs of the APIs we front put their key in, in the order they are looked at.
# Authorization carries "Bearer <key>" (OpenAI, most) or "Token <key>" (Deepgram).
SDK_KEY_HEADERS = (
    "authorization",
    "xi-api-key",  # ElevenLabs
    "x-api-key",  # Cartesia
    "api-key",  # Azure OpenAI
    "ocp-apim-subscription-key",  # Azure Speech
    "x-goog-api-key",  # Google
)
_AUTH_SCHEMES = ("bearer ", "token ")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_FIELDS = (
    "sha256",
    "name",
    "tenant",
    "requests_per_minute",
    "upstream_characters_per_day",
    "may_classify",
    "may_refresh",
)


class KeyFileError(ValueError):
    """The client keys file is malformed; the message names the entry and field."""


@dataclass(frozen=True, slots=True)
class ClientKey:
    """One client key: its digest, tenant, limits and rights."""

    digest: str
    name: str
    tenant: str | None = None
    requests_per_minute: int | None = None
    upstream_characters_per_day: int | None = None
    may_classify: bool = False
    may_refresh: bool = False


def digest_of(key: str) -> str:
    """The hex sha256 a keys file lists for ``key``."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def presented_key(headers: Mapping[str, str], names: Iterable[str] = SDK_KEY_HEADERS) -> str | None:
    """The key a request presents in the first of ``names`` it carries, or None."""
    for name in names:
        value = headers.get(name)
        if value is None:
            continue
        value = value.strip()
        if name.lower() == "authorization":
            scheme = value[:7].lower()
            for known in _AUTH_SCHEMES:
                if scheme.startswith(known):
                    value = value[len(known) :].strip()
                    break
            else:
                continue  # Basic and other schemes do not carry a proxy key
        if value:
            return value
    return None


class ClientKeys:
    """The keys of a keys file, looked up by what a client presents."""

    def __init__(self, keys: Iterable[ClientKey] = ()) -> None:
        self._by_digest = {k.digest: k for k in keys}

    def __len__(self) -> int:
        return len(self._by_digest)

    def __iter__(self) -> Any:
        return iter(self._by_digest.values())

    def find(self, presented: str | None) -> ClientKey | None:
        """The key whose digest matches ``presented``, or None."""
        if presented is None:
            return None
        found = self._by_digest.get(digest_of(presented))
        # The dict lookup compares digests, not secrets; compare again in constant time so
        # no timing says how much of a digest matched.
        if found is not None and hmac.compare_digest(found.digest, digest_of(presented)):
            return found
        return None


def _limit(where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KeyFileError(f"{where}: expected a whole number of at least 1, got {value!r}")
    return value


def _right(where: str, value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise KeyFileError(f"{where}: expected true or false, got {value!r}")
    return value


def parse_keys(document: Any, *, source: str = "keys file") -> ClientKeys:
    """The keys of a parsed keys file; raises KeyFileError naming the bad entry and field."""
    if not isinstance(document, Mapping) or set(document) != {"keys"}:
        raise KeyFileError(f"{source}: expected a mapping with one entry, 'keys: [...]'")
    items = document["keys"] or []
    if not isinstance(items, list):
        raise KeyFileError(f"{source}: keys: expected a list")
    keys: list[ClientKey] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{source}: keys[{i}]"
        if not isinstance(item, Mapping):
            raise KeyFileError(f"{where}: expected a mapping with sha256 and optional fields")
        unknown = sorted(set(map(str, item)) - set(_FIELDS))
        if unknown:
            raise KeyFileError(f"{where}: unknown field(s) {unknown}; allowed: {list(_FIELDS)}")
        digest = item.get("sha256")
        if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
            raise KeyFileError(
                f"{where}.sha256: expected 64 hex characters (the sha256 of the key), "
                f"got {digest!r}"
            )
        digest = digest.lower()
        if digest in seen:
            raise KeyFileError(f"{where}.sha256: listed twice")
        seen.add(digest)
        name = item.get("name", f"key-{digest[:12]}")
        if not isinstance(name, str) or not _NAME.match(name):
            raise KeyFileError(f"{where}.name: must match {_NAME.pattern}, got {name!r}")
        tenant = item.get("tenant")
        if tenant is not None and (not isinstance(tenant, str) or not TENANT_ID.match(tenant)):
            raise KeyFileError(f"{where}.tenant: must match {TENANT_ID.pattern}, got {tenant!r}")
        keys.append(
            ClientKey(
                digest=digest,
                name=name,
                tenant=tenant,
                requests_per_minute=_limit(
                    f"{where}.requests_per_minute", item.get("requests_per_minute")
                ),
                upstream_characters_per_day=_limit(
                    f"{where}.upstream_characters_per_day", item.get("upstream_characters_per_day")
                ),
                may_classify=_right(f"{where}.may_classify", item.get("may_classify")),
                may_refresh=_right(f"{where}.may_refresh", item.get("may_refresh")),
            )
        )
    return ClientKeys(keys)


def credential_digest(value: str, secret: bytes) -> str:
    """What the proxy remembers of an upstream credential: a keyed hash, never the value."""
    return hmac.new(secret, value.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
