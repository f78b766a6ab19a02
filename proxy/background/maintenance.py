"""Background bookkeeping: batched hit counts, the expiry sweeper and the size gauges."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from ..observability.metrics import METRICS
from ..observability.tally import TALLY
from ..store.service import AudioCacheService

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended. Python 3.11's ``asyncio.wait_for`` (used
    inside redis-py) can swallow a cancellation that lands as its inner future completes, so
    a single ``cancel()`` may leave a loop running forever: cancel again until it stops."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        log.debug("task %s ended with %r", task.get_name(), task.exception())


async def every(seconds: float, job: Callable[[], Awaitable[object]], name: str) -> None:
    """Run ``job`` every ``seconds`` until cancelled; errors are logged, never fatal."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except RedisError as exc:
            METRICS.redis_errors.labels(name).inc()
            log.warning("%s failed: %s", name, exc)
        except Exception:
            log.exception("%s failed", name)


def report_hot_tier(service: AudioCacheService) -> None:
    """This process's hot tier: size gauges, and its event counts since the last report
    (counted in the tier itself, so a hot hit does not pay for a Prometheus update)."""
    hot = service.hot
    if hot is None:
        return
    METRICS.hot_tier_bytes.set(hot.bytes)
    METRICS.hot_tier_entries.set(len(hot))
    METRICS.hot_tier_live.set(1 if hot.live else 0)
    for event, count in hot.unreported().items():
        METRICS.hot_tier_events.labels(event).inc(count)


async def refresh_gauges(service: AudioCacheService) -> None:
    """The design document's size gauges, from the shared counters in Redis (so replicas
    agree), and this process's counts kept outside Prometheus until now."""
    TALLY.flush()
    report_hot_tier(service)
    totals = await service.totals()
    METRICS.size_entries.set(totals["entries"])
    METRICS.memory_bytes.set(totals["bytes"])


async def sweep_and_refresh(service: AudioCacheService) -> None:
    await service.sweep()
    await refresh_gauges(service)


class Maintenance:
    """Starts and stops the periodic jobs of one replica."""

    def __init__(
        self, service: AudioCacheService, *, flush_seconds: float, sweep_seconds: float
    ) -> None:
        self.service = service
        self.flush_seconds = flush_seconds
        self.sweep_seconds = sweep_seconds
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(every(self.flush_seconds, self.flush, "flush_counters")),
            asyncio.create_task(
                every(self.sweep_seconds, lambda: sweep_and_refresh(self.service), "sweep")
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        with contextlib.suppress(RedisError, OSError):
            await self.flush()

    async def flush(self) -> None:
        """Batched counts out: hit counts to Redis, the hit path's tally to Prometheus."""
        TALLY.flush()
        await self.service.flush_counters()
