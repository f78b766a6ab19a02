"""The proxy's run time: what starts with the application, runs beside it, and stops with it.

Start: the Redis client, the upstream session, the store service, the request path, then the
background work (maintenance, invalidations, cleanup, prefetch, the client keys watch).
Stop (SIGTERM, see :func:`start_draining`): fills get the drain deadline to finish, then
everything stops in the reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiohttp import web

from .background.cleanup import CLEANER, Cleaner, CleanupRunner
from .background.maintenance import Maintenance, cancel_and_wait
from .background.prefetch import Prefetcher
from .config.settings import Settings
from .core.breaker import CircuitBreaker
from .core.compression import CompressionAdvisor
from .core.packing import Codec
from .core.prefetch_items import ItemError, load_file
from .observability.access_log import flush as flush_access_lines
from .observability.metrics import METRICS
from .request.access import Access
from .request.processor import AudioProcessor
from .request.upstream import UpstreamClient, UpstreamSettings
from .state import DRAINING, PREFETCHER, PROCESSOR, REDIS, REDIS_URL, SERVICE, SETTINGS
from .store.client import open_redis, open_subscriber
from .store.hot_tier import HotTier
from .store.invalidation import InvalidationListener
from .store.keyspace import Keyspace
from .store.memory_policy import check_policy
from .store.pipelined import PipelinedReads
from .store.secret import key_secret
from .store.service import AudioCacheService, CachedAudio

log = logging.getLogger(__name__)


def build_service(settings: Settings, redis: Any, redis_url: str = "") -> AudioCacheService:
    advisor = CompressionAdvisor(
        enabled=settings.audio_cache_compression_enabled,
        threshold_bytes=settings.compression_threshold_bytes,
        min_saving=settings.audio_cache_compression_min_saving_percent / 100,
    )
    return AudioCacheService(
        redis,
        prefix=settings.audio_cache_key_prefix,
        advisor=advisor,
        codec=Codec.named(settings.audio_cache_compression_codec),
        compression_level=settings.audio_cache_compression_level,
        breaker=CircuitBreaker(
            failure_threshold=settings.redis_breaker_failures,
            reset_seconds=settings.redis_breaker_reset_seconds,
        ),
        hot=hot_tier(settings),
        stale_grace_seconds=settings.stale_if_error_seconds,
        reads=pipelined_reads(settings, redis_url),
    )


def pipelined_reads(
    settings: Settings, redis_url: str
) -> Callable[[Sequence[bytes]], PipelinedReads] | None:
    """The hit path's own pipelined connection, on a plain (not cluster, not TLS) store."""
    if not PipelinedReads.supports(redis_url):
        return None
    return lambda fields: PipelinedReads(
        redis_url,
        fields,
        socket_timeout=settings.redis_socket_timeout_seconds,
        connect_timeout=settings.redis_connect_timeout_seconds,
    )


def hot_tier(settings: Settings) -> HotTier[CachedAudio] | None:
    """The in-process hot tier, or None when ``audio_cache_hot_tier_mb`` is 0."""
    max_bytes = int(settings.audio_cache_hot_tier_mb * 1024 * 1024)
    return HotTier(max_bytes) if max_bytes > 0 else None


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    redis = open_redis(
        app[REDIS_URL],
        socket_timeout=settings.redis_socket_timeout_seconds,
        connect_timeout=settings.redis_connect_timeout_seconds,
    )
    upstream = UpstreamClient(
        UpstreamSettings(
            base_url=settings.upstream_url or "http://127.0.0.1:9",
            connect_timeout=settings.upstream_connect_timeout_seconds,
            read_timeout=settings.upstream_read_timeout_seconds,
            total_timeout=settings.upstream_total_timeout_seconds,
            api_key=settings.upstream_api_key,
            api_key_header=settings.upstream_api_key_header,
            api_key_format=settings.upstream_api_key_format,
            lean_misses=settings.upstream_miss_client == "lean",
        )
    )
    await check_policy(redis, allow_allkeys=settings.redis_allow_allkeys_eviction)
    await upstream.start()
    service = build_service(settings, redis, app[REDIS_URL])
    METRICS.cache_max_bytes.set(settings.max_size_bytes)
    app[REDIS] = redis
    app[SERVICE] = service
    app[PROCESSOR] = AudioProcessor(
        settings, service, upstream, audio_path_prefix=settings.audio_path_prefix
    )
    processor = app[PROCESSOR]
    secret_name = Keyspace(settings.audio_cache_key_prefix).key_secret()
    secret = await key_secret(settings.audio_cache_key_secret, redis, secret_name)
    processor.attach(redis, secret)
    keys_watch: asyncio.Task[None] | None = None
    if processor.access.mode == "keys":
        keys_watch = asyncio.create_task(_watch_keys(processor.access), name="client-keys")
    maintenance = Maintenance(
        service,
        flush_seconds=settings.audio_cache_stats_flush_seconds,
        sweep_seconds=settings.audio_cache_sweep_interval_seconds,
    )
    maintenance.start()
    listener: asyncio.Task[None] | None = None
    if service.hot is not None:
        url = app[REDIS_URL]
        invalidations = InvalidationListener(
            lambda attempt: open_subscriber(
                url, attempt, connect_timeout=settings.redis_connect_timeout_seconds
            ),
            service.keyspace.channel(),
            service.hot,
        )
        listener = asyncio.create_task(invalidations.run(), name="invalidations")
    app[CLEANER] = Cleaner.from_settings(service, settings)
    cleanup = CleanupRunner(
        app[CLEANER],
        check_seconds=settings.audio_cache_sweep_interval_seconds,
        quota_for=settings.tenancy.quota_bytes,
    )
    cleanup.start()
    prefetcher = app[PREFETCHER] = Prefetcher(
        app[PROCESSOR],
        concurrency=settings.prefetch_concurrency,
        keep_warm_interval_seconds=settings.prefetch_keep_warm_interval_seconds,
        keep_warm_margin_seconds=settings.prefetch_keep_warm_margin_seconds,
    )
    prefetcher.start()
    _prefetch_at_startup(settings, prefetcher)
    try:
        yield
    finally:
        start_draining(app)
        await prefetcher.stop()
        # Stream fills whose readers left still finish (and are stored), within the drain.
        remaining = app[DRAINING][0] - time.monotonic()
        await app[PROCESSOR].fills.drain(seconds=max(remaining, 0.0))
        await cleanup.stop()
        await maintenance.stop()
        if listener is not None:
            await cancel_and_wait(listener)
        if keys_watch is not None:
            await cancel_and_wait(keys_watch)
        await upstream.close()
        await service.close_reads()
        await redis.aclose()
        # The last answers' access lines, while their loop still runs (not at exit).
        flush_access_lines()


async def _watch_keys(access: Access, seconds: float = 1.0) -> None:
    """Reload the client keys file when it changes (SIGHUP reloads it at once)."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, access.reload)  # main thread, POSIX only
    try:
        while True:
            await asyncio.sleep(seconds)
            access.reload_if_changed()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)


def _prefetch_at_startup(settings: Settings, prefetcher: Prefetcher) -> None:
    """The ``prefetch_file`` list, warmed in the background (validated at config load)."""
    if settings.prefetch_file is None:
        return
    try:
        items = load_file(
            settings.prefetch_file, settings.rules, limit=settings.prefetch_max_requests
        )
    except ItemError as exc:  # the file changed since the settings were loaded
        log.error("prefetch_file: %s", exc)
        return
    job = prefetcher.submit(items, source="startup")
    log.info("prefetching %d requests from %s (job %s)", job.total, settings.prefetch_file, job.id)


def start_draining(app: web.Application) -> None:
    """Graceful shutdown begins: /readyz answers 503 from now on. Records the deadline
    (``shutdown_delay_seconds`` + ``shutdown_drain_seconds`` away) for in-flight work."""
    if not app[DRAINING]:
        settings = app[SETTINGS]
        budget = settings.shutdown_delay_seconds + settings.shutdown_drain_seconds
        app[DRAINING].append(time.monotonic() + budget)
