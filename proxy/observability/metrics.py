"""Every Prometheus metric of the proxy, defined once. Names audio_cache_* are the design
document's.

Under ``serve --workers N`` the processes share a ``PROMETHEUS_MULTIPROC_DIR`` and any of
them answers a scrape for all: counters are summed, and each gauge says how to combine
(the shared-truth gauges read from Redis keep the most recent value).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip


@dataclass(frozen=True)
class Metrics:
    operations: Counter
    size_entries: Gauge
    memory_bytes: Gauge
    cleanup_total: Counter
    cleanup_freed_bytes: Counter
    cleanup_entries_removed: Counter
    compression_operations: Counter
    compression_bytes_saved: Counter
    compression_ratio: Histogram
    requests: Histogram
    upstream_duration: Histogram
    upstream_errors: Counter
    time_to_first_byte: Histogram
    coalesced: Counter
    bytes_served_from_cache: Counter
    characters_saved: Counter
    cost_saved: Counter
    redis_errors: Counter
    fail_open: Counter
    redis_circuit_open: Gauge
    not_stored: Counter
    cache_max_bytes: Gauge
    prefetched: Counter
    hot_tier_events: Counter
    hot_tier_bytes: Gauge
    hot_tier_entries: Gauge
    hot_tier_live: Gauge
    client_requests: Counter
    client_refusals: Counter
    client_upstream_characters: Counter
    websocket_sessions: Counter
    websocket_bytes: Counter
    websocket_active: Gauge
    segment_pieces: Counter
    segment_characters_saved: Counter


def _build() -> Metrics:
    return Metrics(
        operations=Counter(
            "audio_cache_operations_total",
            "Cache operations by operation (get/set) and result (hit/miss/stored/...)",
            ["operation", "result"],
        ),
        size_entries=Gauge(
            "audio_cache_size_entries",
            "Entries in the shared cache",
            multiprocess_mode="mostrecent",
        ),
        memory_bytes=Gauge(
            "audio_cache_memory_bytes",
            "Bytes of audio stored (after compression)",
            multiprocess_mode="mostrecent",
        ),
        cleanup_total=Counter(
            "audio_cache_cleanup_total", "Size-based cleanup runs by result", ["result"]
        ),
        cleanup_freed_bytes=Counter("audio_cache_cleanup_freed_bytes", "Bytes freed by cleanup"),
        cleanup_entries_removed=Counter(
            "audio_cache_cleanup_entries_removed", "Entries removed by cleanup"
        ),
        compression_operations=Counter(
            "audio_cache_compression_operations_total",
            "Compression and decompression operations by result",
            ["operation", "result"],
        ),
        compression_bytes_saved=Counter(
            "audio_cache_compression_bytes_saved", "Bytes saved by compressing stored audio"
        ),
        compression_ratio=Histogram(
            "audio_cache_compression_ratio",
            "Original size / stored size of compressed entries",
            buckets=(1.05, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0),
        ),
        requests=Histogram(
            "tts_proxy_request_duration_seconds",
            "Proxy request duration by route and cache result",
            ["route", "result"],
            buckets=_LATENCY_BUCKETS,
        ),
        upstream_duration=Histogram(
            "tts_proxy_upstream_duration_seconds",
            "Upstream request duration by route and status",
            ["route", "status"],
            buckets=_LATENCY_BUCKETS,
        ),
        upstream_errors=Counter(
            "tts_proxy_upstream_errors_total", "Upstream failures by kind", ["kind"]
        ),
        time_to_first_byte=Histogram(
            "tts_proxy_miss_time_to_first_byte_seconds",
            "Time from request to the first audio byte on a miss",
            ["route"],
            buckets=_LATENCY_BUCKETS,
        ),
        coalesced=Counter(
            "tts_proxy_coalesced_requests_total",
            "Requests served by another request's upstream call",
            ["scope"],
        ),
        bytes_served_from_cache=Counter(
            "tts_proxy_bytes_served_from_cache_total", "Audio bytes served from the cache"
        ),
        characters_saved=Counter(
            "tts_proxy_characters_saved_total", "Characters not sent to the upstream", ["route"]
        ),
        cost_saved=Counter(
            "tts_proxy_estimated_cost_saved_total",
            "Estimated upstream cost saved, in the configured currency",
            ["route"],
        ),
        redis_errors=Counter("tts_proxy_redis_errors_total", "Redis errors by operation", ["op"]),
        fail_open=Counter(
            "tts_proxy_fail_open_total", "Requests forwarded upstream because the cache failed"
        ),
        redis_circuit_open=Gauge(
            "tts_proxy_redis_circuit_open",
            "1 while the store's circuit breaker is open",
            multiprocess_mode="livemax",
        ),
        not_stored=Counter(
            "tts_proxy_not_stored_total", "Cacheable answers not stored, by reason", ["reason"]
        ),
        cache_max_bytes=Gauge(
            "tts_proxy_cache_max_bytes",
            "The configured size limit (audio_cache_max_size_mb)",
            multiprocess_mode="livemax",
        ),
        prefetched=Counter(
            "tts_proxy_prefetch_requests_total",
            "Prefetched requests by source (job, keep_warm) and result (stored, present, ...)",
            ["source", "result"],
        ),
        hot_tier_events=Counter(
            "tts_proxy_hot_tier_events_total",
            "Hot tier (in-process) events: hits, admitted, rejected, evicted, invalidated, "
            "expired, cleared",
            ["event"],
        ),
        hot_tier_bytes=Gauge(
            "tts_proxy_hot_tier_bytes",
            "Bytes held by the hot tiers (summed over --workers processes)",
            multiprocess_mode="livesum",
        ),
        hot_tier_entries=Gauge(
            "tts_proxy_hot_tier_entries",
            "Entries held by the hot tiers (summed over --workers processes)",
            multiprocess_mode="livesum",
        ),
        client_requests=Counter(
            "tts_proxy_client_requests_total",
            "Requests of each authenticated client, over its limits or not (the key's name; "
            "anonymous without keys)",
            ["client"],
        ),
        client_refusals=Counter(
            "tts_proxy_client_refusals_total",
            "Requests refused before any upstream call, by reason",
            ["reason"],
        ),
        client_upstream_characters=Counter(
            "tts_proxy_client_upstream_characters_total",
            "Characters sent upstream on behalf of each client",
            ["client"],
        ),
        segment_pieces=Counter(
            "tts_proxy_segment_pieces_total",
            "Pieces of segmented answers, by result (hit, miss, coalesced, one_off, sighted, "
            "failed)",
            ["result"],
        ),
        segment_characters_saved=Counter(
            "tts_proxy_segment_characters_saved_total",
            "Characters of segmented answers served from stored pieces",
        ),
        hot_tier_live=Gauge(
            "tts_proxy_hot_tier_live",
            "1 while the hot tier serves (invalidations heard); 0 if any worker's is down",
            multiprocess_mode="livemin",
        ),
        websocket_sessions=Counter(
            "tts_proxy_websocket_sessions_total",
            "WebSocket sessions relayed to the upstream, by how they ended (closed, idle, "
            "too_large, upstream_refused, upstream_unreachable)",
            ["result"],
        ),
        websocket_bytes=Counter(
            "tts_proxy_websocket_bytes_total",
            "WebSocket message bytes relayed, by direction (to_upstream, to_client)",
            ["direction"],
        ),
        websocket_active=Gauge(
            "tts_proxy_websocket_active",
            "WebSocket sessions open now (summed over --workers processes)",
            multiprocess_mode="livesum",
        ),
    )


METRICS = _build()


# The directory prometheus_client's multiprocess mode shares between processes.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_exposition() -> bytes:
    """The exposition of every process writing to ``PROMETHEUS_MULTIPROC_DIR``."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
