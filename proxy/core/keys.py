"""Cache keys: a pure, versioned function of everything that changes the sound."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# Bump when the canonical encoding changes: old entries then simply stop matching.
KEY_VERSION = "v1"
_HEX_KEY = re.compile(r"^[0-9a-f]{64}$")
_WHITESPACE_RUN = re.compile(r"\s+")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class CacheKey:
    """The sha256 hex digest that names one cached answer."""

    hex: str

    def __post_init__(self) -> None:
        if not _HEX_KEY.match(self.hex):
            raise ValueError("a cache key is 64 lowercase hex characters")

    @classmethod
    def parse(cls, text: str) -> CacheKey | None:
        """The key for user-supplied text, or None when it is not a well-formed key."""
        return cls(text) if _HEX_KEY.match(text) else None

    def __str__(self) -> str:
        return self.hex


def normalize_text(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, trimmed; case and punctuation kept."""
    return _WHITESPACE_RUN.sub(" ", unicodedata.normalize("NFC", text)).strip()


def upstream_identity(url: str) -> str:
    """The upstream's scheme, host, port and base path, spelled one way."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def canonical_value(value: Any) -> Any:
    """Make equal-sounding JSON values equal: 1.0 and 1 are the same speed."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): canonical_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical_value(v) for v in value]
    return value


def cache_key(
    *,
    upstream: str,
    route: str,
    text: str,
    params: Mapping[str, Any],
    namespace: str = "",
) -> CacheKey:
    """sha256 over a canonical encoding of the upstream, route, text and sound parameters.

    ``params`` maps a field reference (``json:voice``, ``query:output_format``…) to its value;
    every field that can change the audio must be in it. ``namespace`` isolates tenants.
    """
    document = [
        KEY_VERSION,
        upstream,
        namespace,
        route,
        normalize_text(text),
        canonical_value(params),
    ]
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return CacheKey(hashlib.sha256(encoded.encode("utf-8")).hexdigest())
