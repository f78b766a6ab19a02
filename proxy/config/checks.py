"""Checks across settings, each collecting its problem instead of stopping at the first.

Each check names the settings it reads; it is skipped when one of them was invalid (its
default stands in, and a complaint about the default would mislead).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from ..core.packing import HAVE_FLAC, HAVE_ZSTD
from ..observability import tracing
from ..store.client import RedisUrlError, check_url
from .errors import ConfigError
from .files import load_client_keys
from .model import Settings, is_loopback

Check = Callable[[Settings], Iterator[str]]
_CHECKS: list[tuple[frozenset[str], Check]] = []


def _reads(*names: str) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        _CHECKS.append((frozenset(names), check))
        return check

    return register


def run_checks(settings: Settings, failed: set[str]) -> list[str]:
    """Every problem of the checks whose settings are all valid."""
    problems: list[str] = []
    for names, check in _CHECKS:
        if names.isdisjoint(failed):
            try:
                problems.extend(check(settings))
            except ConfigError as exc:
                problems.extend(exc.problems)
    return problems


@_reads("audio_cache_compression_codec")
def _codec(s: Settings) -> Iterator[str]:
    if s.audio_cache_compression_codec == "zstd" and not HAVE_ZSTD:
        yield (
            "audio_cache_compression_codec: zstd needs the 'zstandard' package "
            "(pip install 'tts-cache-proxy[zstd]'), or use zlib"
        )
    if s.audio_cache_compression_codec == "flac" and not HAVE_FLAC:
        yield "audio_cache_compression_codec: flac needs the 'soundfile' package, or use zlib"


@_reads("otel_enabled")
def _tracing(s: Settings) -> Iterator[str]:
    if s.otel_enabled and not tracing.installed():
        yield f"otel_enabled: tracing needs OpenTelemetry: {tracing.INSTALL_HINT}"


@_reads("audio_cache_target_size_percent", "audio_cache_cleanup_threshold_percent")
def _cleanup_band(s: Settings) -> Iterator[str]:
    if s.audio_cache_target_size_percent >= s.audio_cache_cleanup_threshold_percent:
        yield (
            "audio_cache_target_size_percent: must be below audio_cache_cleanup_threshold_percent "
            f"({s.audio_cache_target_size_percent} >= {s.audio_cache_cleanup_threshold_percent})"
        )


@_reads("upstream_url")
def _upstream_url(s: Settings) -> Iterator[str]:
    if s.upstream_url is not None and not re.match(r"^https?://[^/\s]+", s.upstream_url):
        yield f"upstream_url: expected http(s)://host[:port][/path], got {s.upstream_url!r}"


@_reads("redis_url")
def _redis_url(s: Settings) -> Iterator[str]:
    if s.redis_url is None:
        return
    schemes = r"^(redis|rediss|unix|rediss?\+cluster|rediss?\+sentinel)://"
    if not re.match(schemes, s.redis_url):
        yield (
            "redis_url: expected redis://, rediss://, unix://, redis+cluster:// or "
            f"redis+sentinel:// URL, got {s.redis_url!r}"
        )
        return
    try:
        check_url(s.redis_url)
    except RedisUrlError as exc:
        yield str(exc)


@_reads("audio_path_prefix")
def _audio_path(s: Settings) -> Iterator[str]:
    if not re.match(r"^(/[A-Za-z0-9_.~-]+)+$", s.audio_path_prefix):
        yield f"audio_path_prefix: expected a path like /audio, got {s.audio_path_prefix!r}"


@_reads("tenant_header", "tenant_api_key_header")
def _tenant_headers(s: Settings) -> Iterator[str]:
    for name in ("tenant_header", "tenant_api_key_header"):
        value = getattr(s, name)
        if value is not None and not re.match(r"^[A-Za-z0-9-]{1,64}$", value):
            yield f"{name}: expected an HTTP header name, got {value!r}"


@_reads("admin_port", "port")
def _admin_port(s: Settings) -> Iterator[str]:
    if s.admin_port is not None and s.admin_port == s.port:
        yield "admin_port: must differ from port (or be null to serve /admin on it)"


@_reads("prefetch_file", "routes", "prefetch_max_requests")
def _prefetch(s: Settings) -> Iterator[str]:
    if s.prefetch_file is None:
        return
    from ..core.prefetch_items import ItemError, load_file

    try:
        load_file(s.prefetch_file, s.rules, limit=s.prefetch_max_requests)
    except ItemError as exc:
        yield f"prefetch_file: {exc}"


@_reads("client_auth", "client_keys_file", "host", "allow_anonymous_clients")
def _client_auth(s: Settings) -> Iterator[str]:
    mode = s.auth_mode
    if mode == "keys":
        if not s.client_keys_file:
            yield "client_keys_file: client_auth keys needs a keys file (CLIENT_KEYS_FILE)"
        else:
            load_client_keys(s.client_keys_file)
    if mode == "upstream" and s.upstream_api_key:
        yield (
            "client_auth: upstream forwards each client's own credential, and UPSTREAM_API_KEY "
            "would replace it: use client_auth keys (with CLIENT_KEYS_FILE) or none"
        )
    if (
        mode == "none"
        and s.upstream_api_key
        and not is_loopback(s.host)
        and not s.allow_anonymous_clients
    ):
        yield (
            f"client_auth: none with UPSTREAM_API_KEY on host {s.host} lets anyone who reaches "
            "the port synthesize on your account: use client_auth keys with CLIENT_KEYS_FILE, "
            "or set allow_anonymous_clients: true if a gateway in front authenticates"
        )


@_reads("audio_cache_key_prefix")
def _key_prefix(s: Settings) -> Iterator[str]:
    if not re.match(r"^[A-Za-z0-9_.-]{1,32}$", s.audio_cache_key_prefix):
        yield (
            "audio_cache_key_prefix: 1-32 characters of A-Z a-z 0-9 _ . -, "
            f"got {s.audio_cache_key_prefix!r}"
        )
