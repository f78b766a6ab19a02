"""Cache keys: a pure, versioned function of everything that changes the sound."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# Bump when the canonical encoding changes: old entries then simply stop matching.
# v2: the default text normalization keeps NFD apart from NFC and paragraph breaks apart
# from spaces (both change the sound: docs/normalization.md), and the key names it.
KEY_VERSION = "v2"
_HEX_KEY = re.compile(r"^[0-9a-f]{64}$")
_WHITESPACE_RUN = re.compile(r"\s+")
# Only the whitespace measured on the demo engine: other spaces (NBSP, U+3000...) are kept.
_SPACES = " \t\r\n"
# The runs collapse_spaces changes: any run but a lone space (a lone space stays one), so
# the usual text (words and single spaces) is left to the regex engine, no call per gap.
_SPACE_RUN = re.compile(r"[ \t\r\n]{2,}|[\t\r\n]")
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

    def for_credential(self, credential: str) -> CacheKey:
        """A name of this key's own for one caller's credential (its private misses)."""
        return CacheKey(hashlib.sha256(f"{self.hex}@{credential}".encode()).hexdigest())

    def variant(self, form: str) -> CacheKey:
        """A name of this key's own for one form of its answer (its fills in that form)."""
        return CacheKey(hashlib.sha256(f"{self.hex}#{form}".encode()).hexdigest())


# The text transformations a route may key on, in the order they apply. Each changes the
# key only; the upstream always receives the client's text as sent.
NORMALIZATIONS: tuple[str, ...] = ("nfc", "collapse_whitespace", "collapse_spaces", "trim")
# What measured the same PCM on the demo engine, in every context tried (docs/normalization.md).
DEFAULT_NORMALIZATION: tuple[str, ...] = ("collapse_spaces", "trim")


def normalization(names: Iterable[str]) -> tuple[str, ...]:
    """The named transformations in the order they apply; ValueError naming a bad one."""
    chosen = set()
    for name in names:
        if name not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {name!r}; known: {list(NORMALIZATIONS)}")
        chosen.add(name)
    if {"collapse_whitespace", "collapse_spaces"} <= chosen:
        raise ValueError("choose one of collapse_whitespace and collapse_spaces")
    return tuple(n for n in NORMALIZATIONS if n in chosen)


def _collapse(run: re.Match[str]) -> str:
    # A paragraph break (two or more line feeds) is a pause, and how many line feeds can
    # lengthen it: kept, with the spaces, tabs and CRs around them dropped.
    breaks = run.group().count("\n")
    return "\n" * breaks if breaks > 1 else " "


def normalize_text(text: str, steps: Sequence[str] = DEFAULT_NORMALIZATION) -> str:
    """The text as its key sees it; ``steps`` come from :func:`normalization`.

    ``nfc``: Unicode NFC. ``collapse_whitespace``: every whitespace run to one space.
    ``collapse_spaces``: each run of spaces, tabs, CRs and LFs to one space, or to its line
    feeds when it holds a paragraph break. ``trim``: whitespace at the end dropped, and at
    the start unless it holds a paragraph break (a leading pause). Case and punctuation
    are always kept.
    """
    if "nfc" in steps:
        text = unicodedata.normalize("NFC", text)
    if "collapse_whitespace" in steps:
        text = _WHITESPACE_RUN.sub(" ", text)
    elif "collapse_spaces" in steps:
        text = _SPACE_RUN.sub(_collapse, text)
    if "trim" in steps:
        text = text.rstrip(_SPACES)
        rest = text.lstrip(_SPACES)
        if text[: len(text) - len(rest)].count("\n") < 2:
            text = rest
    return text


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
    if isinstance(value, str):  # most values; asked first, it skips the slower Mapping check
        return value
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
    normalize: Sequence[str] = DEFAULT_NORMALIZATION,
) -> CacheKey:
    """sha256 over a canonical encoding of the upstream, route, text and sound parameters.

    ``params`` maps a field reference (``json:voice``, ``query:output_format``…) to its value;
    every field that can change the audio must be in it. ``namespace`` isolates tenants.
    ``normalize`` is the route's text normalization (``SpeechRequest.normalize``); it is
    part of the key, so changing a rule's list never matches entries made under another.
    """
    steps = normalization(normalize)
    document = [
        KEY_VERSION,
        upstream,
        namespace,
        route,
        normalize_text(text, steps),
        canonical_value(params),
        list(steps),
    ]
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return CacheKey(hashlib.sha256(encoded.encode("utf-8")).hexdigest())
