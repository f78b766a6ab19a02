"""The body of ``GET /admin/audio-cache/stats``, assembled from counters (pure).

Everything comes from the per-shard counters the write scripts keep exact, the cleanup
history and this replica's own counts: one pipelined read, never a scan over the entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config.settings import Settings
from ..core.compression import compression_stats
from ..core.eviction import percent_of
from ..core.tenants import Tenants
from ..store.service import Totals

_MB = 1024 * 1024
REMOVAL_REASONS = ("expired", "evicted", "purged", "deleted", "corrupt", "overwritten")


def ratio(hits: int, misses: int) -> float:
    """Hits over lookups, 0.0 before the first lookup."""
    return round(hits / (hits + misses), 4) if hits + misses else 0.0


def percent(part: int, whole: int) -> float:
    return round(100 * part / whole, 2) if whole else 0.0


@dataclass(frozen=True)
class ReplicaCounts:
    """This replica's lookups since it started."""

    started_ms: int
    now_ms: int
    hits: int
    misses: int


def build_stats(
    totals: Totals,
    *,
    settings: Settings,
    replica: ReplicaCounts,
    cleanup_history: Mapping[str, Any],
    prefetch: Mapping[str, Any],
) -> dict[str, Any]:
    """The stats document (see the OpenAPI schema ``Stats``)."""
    stored, original = totals["bytes"], totals["original_bytes"]
    limit = settings.max_size_bytes
    classes = totals.grouped("class")
    tenancy: Tenants = settings.tenancy
    tenants: dict[str, Any] = {}
    grouped = totals.grouped("tenant")
    for name in sorted(set(grouped) | set(settings.tenants)):
        counters = grouped.get(name, {})
        if not any(counters.values()) and name not in settings.tenants:
            continue
        policy = tenancy.policy(name)
        quota = policy.quota_bytes
        tenants[name] = {
            "entries": counters.get("entries", 0),
            "bytes": counters.get("bytes", 0),
            "hits": counters.get("hits", 0),
            "quota_bytes": quota,
            "percent_of_quota": percent(counters.get("bytes", 0), quota) if quota else None,
            "namespace": policy.namespace,
            "enabled": policy.enabled,
            "configured": name in settings.tenants,
        }
    return {
        "enabled": settings.audio_cache_enabled,
        "entries": totals["entries"],
        "size": {
            "stored_bytes": stored,
            "original_bytes": original,
            "stored_mb": round(stored / _MB, 3),
            "original_mb": round(original / _MB, 3),
            "max_size_mb": settings.audio_cache_max_size_mb,
            "max_bytes": limit,
            "percent_used": percent(stored, limit),
        },
        "requests": {
            "lifetime": {
                "hits": totals["hits"],
                "misses": totals["misses"],
                "hit_ratio": ratio(totals["hits"], totals["misses"]),
            },
            "since_start": {
                "hits": replica.hits,
                "misses": replica.misses,
                "hit_ratio": ratio(replica.hits, replica.misses),
                "started_ms": replica.started_ms,
                "uptime_seconds": round((replica.now_ms - replica.started_ms) / 1000, 1),
            },
        },
        "content_types": {
            name: {
                "entries": counters.get("entries", 0),
                "bytes": counters.get("bytes", 0),
                "hits": counters.get("hits", 0),
                "ttl_seconds": settings.ttl_for(name),
            }
            for name, counters in sorted(classes.items())
            if any(counters.values())
        },
        "tenants": tenants,
        "removals": {reason: totals[reason] for reason in REMOVAL_REASONS},
        "cleanup": {
            "max_size_mb": settings.audio_cache_max_size_mb,
            "threshold_percent": settings.audio_cache_cleanup_threshold_percent,
            "target_percent": settings.audio_cache_target_size_percent,
            "threshold_bytes": percent_of(limit, settings.audio_cache_cleanup_threshold_percent),
            "target_bytes": percent_of(limit, settings.audio_cache_target_size_percent),
            "age_weight": settings.audio_cache_cleanup_age_weight,
            "frequency_weight": settings.audio_cache_cleanup_frequency_weight,
            "age_basis": settings.audio_cache_cleanup_age_basis,
            "content_type_factors": dict(settings.audio_cache_cleanup_content_type_factors),
            **cleanup_history,
        },
        "compression": compression_stats(
            enabled=settings.audio_cache_compression_enabled,
            threshold_kb=settings.audio_cache_compression_threshold_kb,
            level=settings.audio_cache_compression_level,
            compressed_entries=totals["compressed_entries"],
            compressed_bytes=totals["compressed_bytes"],
            compressed_original_bytes=totals["compressed_original_bytes"],
        ),
        "prefetch": dict(prefetch),
        # Audio of misses shared through the coalescing streams: held in Redis now
        # (outside the entries and the size limit, until each stream is gone), and ever.
        "coalescing": {
            "stream_bytes_held": max(0, totals["stream_bytes_held"]),
            "stream_bytes_written": totals["stream_bytes"],
        },
    }
