"""The settings of the proxy: names, types, defaults, bounds and what each one does.

Loading (YAML, environment, secrets) is in :mod:`proxy.config.loading`, the checks across
settings in :mod:`proxy.config.checks`; :mod:`proxy.config.settings` gathers the public names.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.clients import SDK_KEY_HEADERS
from ..core.joining import DEFAULT_PAUSE_MS
from ..core.routes import RouteRule, build_rules
from ..core.segments import MISS_MODES as SEGMENT_MISS_MODES
from ..core.segments import MODES as SEGMENT_MODES
from ..core.tenants import TenantPolicy, Tenants

SEED_CONTENT_TYPE_TTLS: dict[str, int] = {
    "welcome_message": 7 * 86400,
    "common_responses": 3 * 86400,
    "error_messages": 7 * 86400,
    "hotel_location": 7 * 86400,
    "reservation_instructions": 3 * 86400,
    "room_options": 86400,
    "availability_response": 12 * 3600,
}
# Lower factor = more protected from cleanup (the design document protects welcome and
# common responses).
SEED_CONTENT_TYPE_FACTORS: dict[str, float] = {
    "welcome_message": 0.3,
    "common_responses": 0.5,
    "error_messages": 0.7,
    "hotel_location": 0.7,
}
CONTENT_TYPE_NAME = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,63}$")
SECRETS = ("upstream_api_key", "admin_token", "audio_cache_key_secret")
AUTH_MODES = ("auto", "keys", "upstream", "none")
_LOOPBACK_HOSTS = ("localhost", "::1")


@dataclass(frozen=True)
class ContentTypeRule:
    """Texts matching ``pattern`` belong to ``content_type``."""

    pattern: re.Pattern[str]
    content_type: str


def _meta(
    doc: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] = (),
) -> dict[str, Any]:
    """What a setting does and which values it allows (read by loading and the reference)."""
    return {"lo": lo, "hi": hi, "choices": choices, "doc": doc}


def _setting(default: Any, doc: str, **bounds: Any) -> Any:
    return field(default=default, metadata=_meta(doc, **bounds))


def _table(factory: Any, doc: str) -> Any:
    return field(default_factory=factory, metadata=_meta(doc))


@dataclass(frozen=True)
class Settings:
    """Every setting of the proxy. Names starting ``audio_cache_`` are the design document's."""

    # Where the proxy listens and what it fronts.
    upstream_url: str | None = _setting(
        None, "The TTS API the proxy sits in front of (http(s)://host[:port][/path]); "
        "required by `serve`."
    )  # fmt: skip
    host: str = _setting("127.0.0.1", "Address the proxy listens on.")
    port: int = _setting(8080, "Port the proxy listens on.", lo=0, hi=65535)
    routes: tuple[Any, ...] = _setting(
        ("openai", "elevenlabs", "get"),
        "Which requests are cacheable speech: preset names (openai, elevenlabs, get) and/or "
        "custom rules; first match wins.",
    )
    # Redis: empty means start the embedded Valkey server.
    redis_url: str | None = _setting(
        None, "redis://, rediss://, unix:// or redis+cluster://host1:port,host2:port; "
        "empty starts a private embedded Valkey."
    )  # fmt: skip
    embedded_data_dir: str | None = _setting(
        None, "Where the embedded Valkey keeps its snapshot; empty: a temporary directory."
    )
    # A dead or hung Redis must cost little: short timeouts, then the breaker opens.
    redis_socket_timeout_seconds: float = _setting(
        1.0, "Timeout of one Redis command; then the request fails open.", lo=0.001
    )
    redis_connect_timeout_seconds: float = _setting(
        0.5, "Timeout of connecting to Redis.", lo=0.001
    )
    redis_breaker_failures: int = _setting(
        5, "Consecutive Redis errors that open the breaker (the store is skipped).", lo=1
    )
    redis_breaker_reset_seconds: float = _setting(
        2.0, "How long an open breaker skips the store before one probe decides.", lo=0.01
    )
    redis_allow_allkeys_eviction: bool = _setting(
        False, "Start even when Redis may evict bookkeeping keys (maxmemory-policy allkeys-*)."
    )
    # The design document's settings.
    audio_cache_enabled: bool = _setting(True, "false: pure pass-through, nothing read or written.")
    audio_cache_ttl_seconds: int = _setting(
        86400, "TTL of content types not in audio_cache_content_type_ttls.", lo=1
    )
    audio_cache_max_size_mb: float = _setting(
        100.0, "Cleanup keeps the stored bytes under this.", lo=0.001
    )
    audio_cache_max_entry_size_mb: float = _setting(
        10.0, "Larger answers are served but not stored.", lo=0.001
    )
    audio_cache_compression_enabled: bool = _setting(True, "Compress large entries.")
    audio_cache_compression_threshold_kb: float = _setting(
        100.0, "Compress entries larger than this.", lo=0
    )
    audio_cache_compression_level: int = _setting(6, "Compression level.", lo=1, hi=9)
    # What this project adds on top of the design document.
    audio_cache_compression_codec: str = _setting(
        "zstd", "zstd (decodes ~5x faster than zlib, same size on speech), zlib (the design "
        "document's), or flac (lossless audio: 16-bit PCM and WAV, other audio falls back to "
        "zlib; ~35% smaller than zstd, half the size of the audio at level 8-9, ~6x slower "
        "to decode).",
        choices=("zlib", "zstd", "flac"),
    )  # fmt: skip
    audio_cache_compression_min_saving_percent: float = _setting(
        5.0, "Store uncompressed when compression saves less than this.", lo=0, hi=100
    )
    audio_cache_key_prefix: str = _setting(
        "ttsc", "Every Redis key of this cache starts with it (1-32 of A-Z a-z 0-9 _ . -)."
    )
    audio_cache_upstream_identity: str | None = _setting(
        None, "Part of every key; empty: the upstream URL (changing it starts a fresh cache)."
    )
    audio_cache_content_type_header: str = _setting(
        "X-Audio-Cache-Content-Type", "Request header naming the content type of the text."
    )
    audio_cache_content_type_ttls: Mapping[str, int] = _table(
        lambda: dict(SEED_CONTENT_TYPE_TTLS), "TTL per content type, in seconds (each at least 1)."
    )
    audio_cache_content_type_rules: tuple[ContentTypeRule, ...] = _setting(
        (), "Without the header, the first {pattern, content_type} whose regex "
        "(case-insensitive) matches the text names its content type."
    )  # fmt: skip
    audio_cache_cleanup_threshold_percent: float = _setting(
        95.0, "Cleanup starts at this share of audio_cache_max_size_mb.", lo=1, hi=100
    )
    audio_cache_target_size_percent: float = _setting(
        80.0, "... and stops at this share (below the threshold).", lo=0, hi=100
    )
    audio_cache_cleanup_age_weight: float = _setting(
        0.7, "Weight of age in the cleanup score.", lo=0, hi=1
    )
    audio_cache_cleanup_frequency_weight: float = _setting(
        0.3, "Weight of rarity of hits in the cleanup score.", lo=0, hi=1
    )
    # Age counted since the last hit beats since-creation on every cache size of
    # bench/hit_ratio.py; "created" restores the design document's exact behaviour.
    audio_cache_cleanup_age_basis: str = _setting(
        "last_access", "Age counted since the last hit, or since creation.",
        choices=("created", "last_access"),
    )  # fmt: skip
    audio_cache_cleanup_content_type_factors: Mapping[str, float] = _table(
        lambda: dict(SEED_CONTENT_TYPE_FACTORS),
        "Cleanup factor per content type (0-1; lower is more protected; unlisted: 1.0).",
    )
    audio_cache_sweep_interval_seconds: float = _setting(
        1.0, "How often TTL expiries are reconciled into the size counters.", lo=0.05
    )
    audio_cache_stats_flush_seconds: float = _setting(
        1.0, "How often batched hit counts are written.", lo=0.01
    )
    # Kept in step with deletes everywhere through Redis pub/sub.
    audio_cache_hot_tier_mb: float = _setting(
        32.0, "Decoded audio of the most requested entries kept in each process (0: off).", lo=0
    )
    known_hits_enabled: bool = _setting(
        True, "A request repeated byte for byte after a plain hit is answered by its "
        "connection, with the same checks and the same answer (docs/internals.md).",
    )  # fmt: skip
    # Misses: single flight across replicas (a lock and a Redis Stream per key in flight).
    coalescing_enabled: bool = _setting(
        True, "Identical misses on every replica make one upstream call."
    )
    coalescing_wait_seconds: float = _setting(
        30.0, "A follower hearing nothing this long answers 504.", lo=0.05, hi=3600
    )
    coalescing_lock_seconds: float = _setting(
        10.0, "A dead leader is noticed (and replaced) within this.", lo=0.05, hi=3600
    )
    fill_continue_after_disconnect: bool = _setting(
        True, "A miss whose clients all left still completes and is stored (false: cancelled)."
    )
    audio_path_prefix: str = _setting(
        "/audio", "GET <prefix>/<key> serves a cached entry to players and browsers."
    )
    # Upstream client.
    upstream_connect_timeout_seconds: float = _setting(
        5.0, "Timeout of connecting to the upstream.", lo=0.01
    )
    upstream_read_timeout_seconds: float = _setting(
        60.0, "Timeout of the first byte, and between chunks.", lo=0.01
    )
    upstream_total_timeout_seconds: float = _setting(
        300.0, "Timeout of a whole upstream call.", lo=0.01
    )
    upstream_miss_client: str = _setting(
        "lean", "How misses call the upstream: lean (requests written whole on pooled "
        "connections, answers parsed strictly by llhttp: earlier first bytes) or aiohttp "
        "(aiohttp's client, lenient with malformed answers: bare LF line ends, folded "
        "headers). Pass-through requests always use aiohttp's.",
        choices=("lean", "aiohttp"),
    )  # fmt: skip
    stale_if_error_seconds: int = _setting(
        0, "Keep entries this long past their TTL and serve them when the upstream fails "
        "(0: off).", lo=0, hi=30 * 86400,
    )  # fmt: skip
    upstream_api_key_header: str = _setting("Authorization", "Header UPSTREAM_API_KEY is sent in.")
    upstream_api_key_format: str = _setting(
        "Bearer {key}", "How UPSTREAM_API_KEY is written in that header."
    )
    max_request_body_kb: float = _setting(1024.0, "Larger request bodies get 413.", lo=1)
    client_idle_timeout_seconds: float = _setting(
        15.0, "A connection sending no whole request (headers) this long is closed.", lo=0.1
    )
    client_body_timeout_seconds: float = _setting(
        10.0, "A request body must arrive within this (408 otherwise).", lo=0.1
    )
    log_level: str = _setting("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = _setting("text", "Log format.", choices=("text", "json"))
    access_log: bool = _setting(
        True, "One line per request (request id, route, result, status, bytes, duration)."
    )
    otel_enabled: bool = _setting(
        False, "OpenTelemetry traces of the request path (pip install 'tts-cache-proxy[otel]'); "
        "the exporter is set by the standard OTEL_* variables (docs/tracing.md).",
    )  # fmt: skip
    cost_per_million_characters: Mapping[str, float] = _table(
        dict, "Price per million characters for the estimated cost saved; keys "
        '"<route>:<voice>", "<route>" or "default" (most specific wins).'
    )  # fmt: skip
    # Graceful shutdown (SIGTERM).
    shutdown_delay_seconds: float = _setting(
        0.0, "After SIGTERM /readyz answers 503 while requests are still served this long.",
        lo=0, hi=300,
    )  # fmt: skip
    shutdown_drain_seconds: float = _setting(
        25.0, "Then in-flight requests and fills get this long to finish.", lo=0, hi=3600
    )
    readiness_requires_redis: bool = _setting(
        True, "false: /readyz stays 200 (degraded) while Redis is down (requests fail open)."
    )
    admin_port: int | None = _setting(
        None, "A separate listener for /admin (then not served on `port`); empty: on `port`.",
        lo=1, hi=65535,
    )  # fmt: skip
    admin_host: str | None = _setting(
        None, "Address of the admin listener; empty: the same as `host`."
    )
    # Tenants: named by a request header, else by a hash of the client's API key header.
    tenant_header: str | None = _setting(
        None, "Request header naming the tenant (trusted only with tenant_header_trusted)."
    )
    tenant_api_key_header: str | None = _setting(
        None, "Else a hash of this header's value names the tenant."
    )
    tenants: Mapping[str, TenantPolicy] = _table(
        dict, "Policy per tenant id: enabled, namespace (isolated|shared), quota_mb, "
        "ttl_seconds, ttls, requests_per_minute, upstream_characters_per_day."
    )  # fmt: skip
    tenant_default_policy: TenantPolicy = field(
        default_factory=TenantPolicy, metadata=_meta("The policy of tenants not listed in tenants.")
    )
    # Prefetch: background synthesis of listed requests, with bounded concurrency.
    prefetch_file: str | None = _setting(
        None, "A YAML list of requests synthesized in the background at start-up."
    )
    prefetch_concurrency: int = _setting(
        4, "Upstream calls at once, over every prefetch job.", lo=1, hi=64
    )
    prefetch_max_requests: int = _setting(1000, "Requests per prefetch job.", lo=1, hi=100_000)
    prefetch_keep_warm_interval_seconds: float = _setting(
        60.0, "How often keep-warm entries are checked.", lo=0.05
    )
    prefetch_keep_warm_margin_seconds: float = _setting(
        3600.0, "Keep-warm entries are re-synthesized with less than min(margin, half their "
        "TTL) left.", lo=0,
    )  # fmt: skip
    # Who may use the proxy (README, "Security").
    client_auth: str = _setting(
        "auto", "keys (a client keys file), upstream (clients bring the upstream's "
        "credential), none (a gateway in front authenticates), auto (keys with a keys "
        "file, none with an injected upstream key on loopback, else upstream).",
        choices=AUTH_MODES,
    )  # fmt: skip
    client_keys_file: str | None = _setting(
        None, "YAML list of client keys (sha256, name, tenant, limits); reloaded on change."
    )
    client_key_headers: tuple[str, ...] = _setting(
        (), "Headers a client key is read from; empty: Authorization and each SDK's own."
    )
    credential_verify_seconds: float = _setting(
        300.0, "client_auth upstream: hits only for credentials the upstream accepted this "
        "recently.", lo=1, hi=86400,
    )  # fmt: skip
    allow_anonymous_clients: bool = _setting(
        False, "Allow client_auth none with UPSTREAM_API_KEY on a non-loopback host."
    )
    passthrough_paths: tuple[str, ...] = _setting(
        (), "With UPSTREAM_API_KEY, what is forwarded besides the speech routes (globs)."
    )
    tenant_header_trusted: bool = _setting(
        False, "A bare tenant header names the tenant only when this is true."
    )
    limits_fail_open: bool = _setting(
        True, "Redis down: limits let requests through (true) or refuse them with 503."
    )
    # Segment caching (docs/segments.md): off, or one entry per sentence or clause. A route
    # rule, a tenant policy and the X-Audio-Cache-Segments header override it.
    audio_cache_segments: str = _setting(
        "off", "Segment caching: off, or one entry per sentence or clause.",
        choices=SEGMENT_MODES,
    )  # fmt: skip
    segment_pause_ms: int = _setting(
        DEFAULT_PAUSE_MS, "Silence between joined pieces (the demo engine's sentence pause).",
        lo=0, hi=5000,
    )  # fmt: skip
    segment_no_cache_patterns: tuple[str, ...] = _setting(
        (), "Pieces matching any of these regexes are synthesized but never stored."
    )
    segment_concurrency: int = _setting(
        4, "Missing pieces of one answer synthesized at once.", lo=1, hi=64
    )
    segment_store_after_sightings: int = _setting(
        1, "A piece is stored from the request that misses it this many times (counted "
        "across replicas); 1: at its first miss.", lo=1, hi=1000,
    )  # fmt: skip
    segment_sightings_window_seconds: int = _setting(
        86400, "How long a piece's misses are remembered for segment_store_after_sightings.",
        lo=1, hi=31536000,
    )  # fmt: skip
    segment_miss_mode: str = _setting(
        "pieces", "pieces (each missing piece its own upstream call, stored) or runs (a run "
        "of missing pieces is one call for the answer; its pieces are rendered apart for "
        "the cache).",
        choices=SEGMENT_MISS_MODES,
    )  # fmt: skip
    event_loop: str = _setting(
        "asyncio", "The event loop of serve: asyncio's own, or uvloop (pip install uvloop).",
        choices=("asyncio", "uvloop"),
    )  # fmt: skip
    # WebSocket sessions passed through to the upstream (paths no route claims).
    websocket_max_message_kb: int = _setting(
        1024, "Largest WebSocket message relayed either way; a larger one closes with 1009.", lo=1
    )
    websocket_idle_timeout_seconds: float = _setting(
        60.0, "A WebSocket session carrying no message this long is closed (1001).", lo=0.1
    )
    # Secrets: environment only.
    upstream_api_key: str | None = field(
        default=None, repr=False, metadata=_meta("Injected upstream credential (secret).")
    )
    admin_token: str | None = field(
        default=None, repr=False, metadata=_meta("Bearer token of /admin (secret).")
    )
    audio_cache_key_secret: str | None = field(
        default=None, repr=False,
        metadata=_meta(
            "Mixed into the keys of isolated tenants (secret); empty: one kept in Redis."
        ),
    )  # fmt: skip

    @property
    def rules(self) -> tuple[RouteRule, ...]:
        """The compiled route rules (validated when the settings were loaded)."""
        return build_rules(self.routes)

    @property
    def max_size_bytes(self) -> int:
        return int(self.audio_cache_max_size_mb * 1024 * 1024)

    @property
    def max_entry_bytes(self) -> int:
        return int(self.audio_cache_max_entry_size_mb * 1024 * 1024)

    @property
    def compression_threshold_bytes(self) -> int:
        return int(self.audio_cache_compression_threshold_kb * 1024)

    def ttl_for(self, content_type: str | None) -> int:
        """The TTL table, then the default."""
        if content_type and content_type in self.audio_cache_content_type_ttls:
            return self.audio_cache_content_type_ttls[content_type]
        return self.audio_cache_ttl_seconds

    @property
    def tenancy(self) -> Tenants:
        """Who a request belongs to and the policies that apply."""
        return Tenants(
            header=self.tenant_header,
            api_key_header=self.tenant_api_key_header,
            policies=self.tenants,
            default=self.tenant_default_policy,
        )

    @property
    def auth_mode(self) -> str:
        """The client authentication in force, ``auto`` resolved."""
        if self.client_auth != "auto":
            return self.client_auth
        if self.client_keys_file:
            return "keys"
        return "none" if self.upstream_api_key else "upstream"

    @property
    def key_headers(self) -> tuple[str, ...]:
        """Where client keys and upstream credentials are read from, lower-cased."""
        return tuple(h.lower() for h in self.client_key_headers) or SDK_KEY_HEADERS

    @property
    def content_classes(self) -> frozenset[str]:
        """The content types a client may name: those the configuration knows."""
        return frozenset(
            {"default", *self.audio_cache_content_type_ttls,
             *self.audio_cache_cleanup_content_type_factors,
             *(r.content_type for r in self.audio_cache_content_type_rules)}
        )  # fmt: skip

    def classify(self, text: str) -> str | None:
        """The content type the YAML rules give this text, if any."""
        for rule in self.audio_cache_content_type_rules:
            if rule.pattern.search(text):
                return rule.content_type
        return None

    def public(self) -> dict[str, Any]:
        """The effective settings for display, secrets masked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in SECRETS:
                value = "***" if value else None
            elif f.name == "audio_cache_content_type_rules":
                value = [
                    {"pattern": r.pattern.pattern, "content_type": r.content_type} for r in value
                ]
            elif f.name == "tenants":
                value = {name: policy.to_json() for name, policy in value.items()}
            elif isinstance(value, TenantPolicy):
                value = value.to_json()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def default_of(f: dataclasses.Field[Any]) -> Any:
    """A setting's default value."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach a listener on ``host``."""
    return host in _LOOPBACK_HOSTS or host.startswith("127.")
