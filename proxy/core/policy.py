"""What may be read from and written to the cache, decided as pure functions over headers."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from enum import Enum

from .json_audio import ExpectedAudio, is_json, refusal
from .media import SNIFF_BYTES, sniff


class Directive(Enum):
    """What the client's request allows."""

    USE = "use"  # read, and write on a miss
    REFRESH = "refresh"  # Cache-Control: no-cache: skip the read, write the fresh answer
    BYPASS = "bypass"  # Cache-Control: no-store: neither read nor write


def _directives(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(","):
        name, _, arg = part.partition("=")
        if name.strip():
            out[name.strip().lower()] = arg.strip().strip('"')
    return out


def request_directive(headers: Mapping[str, str]) -> Directive:
    """The client's Cache-Control (and legacy Pragma) as a cache directive."""
    directives = _directives(headers.get("cache-control", ""))
    if "no-store" in directives:
        return Directive.BYPASS
    if "no-cache" in directives or directives.get("max-age") == "0":
        return Directive.REFRESH
    if not directives and "no-cache" in headers.get("pragma", "").lower():
        return Directive.REFRESH
    return Directive.USE


# Request headers a Vary may name without splitting entries: cacheable requests always go
# upstream with Accept-Encoding: identity, so every stored answer is the same variant.
_VARY_FIXED = frozenset({"accept-encoding"})


def vary_refusal(vary_header: str | None, keyed_headers: Collection[str]) -> str | None:
    """``"vary"`` when an answer's ``Vary`` names a request header the key does not
    include (the next caller may need another answer), or is ``*``; else None.

    ``vary_header`` is every Vary value joined with commas; ``keyed_headers`` are the
    route's keyed header names (``RouteRule.headers``).
    """
    if not vary_header:
        return None
    keyed = {h.lower() for h in keyed_headers} | _VARY_FIXED
    for token in vary_header.split(","):
        name = token.strip().lower()
        if name and (name == "*" or name not in keyed):
            return "vary"
    return None


def refusal_before_body(
    *,
    status: int,
    headers: Mapping[str, str],
    max_entry_bytes: int,
    keyed_headers: Collection[str] = (),
) -> str | None:
    """Why an upstream answer must not be stored, judged from its status and headers
    (lower-cased names). ``keyed_headers``: the request headers the route keys on."""
    if status != 200:
        return "status"
    directives = _directives(headers.get("cache-control", ""))
    if "no-store" in directives or "private" in directives:
        return "upstream_no_store"
    vary = vary_refusal(headers.get("vary"), keyed_headers)
    if vary is not None:
        return vary
    if headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        return "content_encoding"
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_entry_bytes:
        return "too_large"
    return None


def refusal_after_body(
    *,
    headers: Mapping[str, str],
    body: bytes,
    complete: bool,
    max_entry_bytes: int,
    pcm_types: Collection[str] = (),
    json_audio: ExpectedAudio | None = None,
) -> str | None:
    """Why a finished upstream answer must not be stored, judged from its body.
    ``pcm_types``: media types the route declares as headerless PCM (see media.sniff).
    ``json_audio``: where a JSON answer of this request holds its base64 audio; such an
    answer is judged by decoding that field (see proxy.core.json_audio)."""
    if not complete:
        return "truncated"
    if not body:
        return "empty"
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) != len(body):
        return "truncated"
    if len(body) > max_entry_bytes:
        return "too_large"
    content_type = headers.get("content-type", "")
    if json_audio is not None and is_json(content_type):
        return refusal(json_audio, body, pcm_types=pcm_types)
    if not sniff(content_type, body[:SNIFF_BYTES], pcm_types=pcm_types):
        return "not_audio"
    return None


# Upstream headers a hit replays by default: properties of the audio itself. Names ending
# in '*' are prefixes. A route adds its own with ``replay_headers``.
DEFAULT_REPLAY_HEADERS: tuple[str, ...] = (
    "content-disposition",
    "content-language",
    "x-sample-rate",
    "x-audio-*",
)
# Never replayed, whatever a route allows: the proxy's own headers and the entry's (set
# apart), hop-by-hop ones, and what belongs to one caller or one call (cookies, request
# ids, organisations, timings, rate limits, balances, character counts, costs).
_NEVER_REPLAYED = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "content-length", "content-encoding", "content-range", "accept-ranges",
        "content-type", "content-location", "date", "age", "cache-control", "expires",
        "etag", "last-modified", "vary", "server", "via", "alt-svc", "location",
        "cache-status", "x-cache", "x-audio-cache-key",
        "set-cookie", "set-cookie2", "authorization", "www-authenticate", "retry-after",
        "strict-transport-security", "openai-organization", "openai-project",
        "openai-processing-ms", "openai-version", "history-item-id", "character-cost",
        "x-character-count", "cf-ray", "apim-request-id", "x-envoy-upstream-service-time",
        "server-timing", "x-response-time", "x-runtime",
    }
)  # fmt: skip
_NEVER_REPLAYED_PARTS = re.compile(
    r"rate-?limit|request-?id|trace|balance|quota|credit|billing|cost|usage|character|"
    r"cookie|session|token|auth|processing|latency|service-time|organi[sz]ation|account"
)


def never_replayed(name: str) -> bool:
    """Whether an upstream header (lower-case name) may never be stored for replay."""
    return name in _NEVER_REPLAYED or _NEVER_REPLAYED_PARTS.search(name) is not None


def replayable(
    headers: Iterable[tuple[str, str]], allowed: Collection[str] = DEFAULT_REPLAY_HEADERS
) -> list[tuple[str, str]]:
    """The upstream headers a hit replays: those ``allowed`` names (or ``prefix*``) allow,
    minus any that are never replayed."""
    exact = {a.lower() for a in allowed if not a.endswith("*")}
    prefixes = tuple(a[:-1].lower() for a in allowed if a.endswith("*"))
    out = []
    for name, value in headers:
        lower = name.lower()
        if (lower in exact or lower.startswith(prefixes)) and not never_replayed(lower):
            out.append((name, value))
    return out
