"""Background prefetch: synthesize listed requests before anyone asks, and keep some warm.

A job takes a list of items (from ``POST /admin/audio-cache/prefetch`` or the start-up
``prefetch_file``) and warms each through the request path's own fill machinery, so a
prefetch and a client's identical miss make one upstream call between them. Entries
already cached are skipped without touching them (their TTL and hits stay as they are).
One semaphore bounds the upstream calls of every job together. Items marked ``keep_warm``
are re-synthesized before they expire. Job progress is kept in memory and copied to
Redis for a day, so every replica can report it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from ..core.prefetch_items import PrefetchItem
from ..observability.metrics import METRICS
from ..request.processor import AudioProcessor, Outgoing, Warmed
from .maintenance import cancel_and_wait, every

log = logging.getLogger(__name__)

JOBS_KEPT = 100
JOB_TTL_SECONDS = 86400
PUBLISH_EVERY_SECONDS = 0.25
KEEP_WARM_LIMIT = 10_000
_ERRORS_KEPT = 50


def needs_rewarm(ttl_left_ms: int, ttl_seconds: int, margin_seconds: float) -> bool:
    """Re-synthesize a keep-warm entry when it is gone, or when less than the margin (at
    most half its TTL, so a short TTL is not re-warmed on every check) is left."""
    if ttl_left_ms <= 0:
        return True
    return ttl_left_ms < min(margin_seconds, ttl_seconds / 2) * 1000


@dataclass
class PrefetchJob:
    """Progress of one prefetch job."""

    id: str
    source: str
    total: int
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    finished_ms: int | None = None
    results: Counter[str] = field(default_factory=Counter)
    upstream_calls: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(self.results.values())

    @property
    def state(self) -> str:
        """running, done, or stopped (the replica shut down before the end)."""
        if self.finished_ms is None:
            return "running"
        return "done" if self.done == self.total else "stopped"

    def record(self, index: int, warmed: Warmed) -> None:
        self.results[warmed.result] += 1
        self.upstream_calls += int(warmed.upstream_called)
        if warmed.result not in ("present", "stored") and len(self.errors) < _ERRORS_KEPT:
            self.errors.append({"index": index, "key": warmed.key.hex, "reason": warmed.result})

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.id,
            "source": self.source,
            "state": self.state,
            "total": self.total,
            "done": self.done,
            "results": dict(self.results),
            "upstream_calls": self.upstream_calls,
            "errors": list(self.errors),
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
        }


class Prefetcher:
    """Runs prefetch jobs and the keep-warm loop of one replica."""

    def __init__(
        self,
        processor: AudioProcessor,
        *,
        concurrency: int = 4,
        keep_warm_interval_seconds: float = 60.0,
        keep_warm_margin_seconds: float = 3600.0,
    ) -> None:
        self.processor = processor
        self.keep_warm_interval_seconds = keep_warm_interval_seconds
        self.keep_warm_margin_seconds = keep_warm_margin_seconds
        self.jobs: OrderedDict[str, PrefetchJob] = OrderedDict()
        self.keep_warm: dict[str, PrefetchItem] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._published: dict[str, float] = {}

    def submit(self, items: Sequence[PrefetchItem], *, source: str = "admin") -> PrefetchJob:
        """Start a job in the background; its progress is ``self.jobs[job.id]``."""
        job = PrefetchJob(id=uuid.uuid4().hex[:16], source=source, total=len(items))
        self.jobs[job.id] = job
        while len(self.jobs) > JOBS_KEPT:
            self.jobs.popitem(last=False)
        task = asyncio.create_task(self._run(job, items), name=f"prefetch:{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    @property
    def running(self) -> int:
        return sum(1 for job in self.jobs.values() if job.finished_ms is None)

    async def _run(self, job: PrefetchJob, items: Sequence[PrefetchItem]) -> None:
        await self._publish(job, force=True)
        try:
            await asyncio.gather(*(self._one(job, i, item) for i, item in enumerate(items)))
        finally:
            job.finished_ms = int(time.time() * 1000)
            await self._publish(job, force=True)
            self._published.pop(job.id, None)
            log.info("prefetch job %s (%s) done: %s", job.id, job.source, dict(job.results))

    async def _one(self, job: PrefetchJob, index: int, item: PrefetchItem) -> None:
        warmed = await self.warm(item)
        job.record(index, warmed)
        METRICS.prefetched.labels("job", warmed.result).inc()
        room = len(self.keep_warm) < KEEP_WARM_LIMIT or warmed.key.hex in self.keep_warm
        if item.keep_warm and warmed.result in ("present", "stored") and room:
            self.keep_warm[warmed.key.hex] = item
        await self._publish(job)

    def _job_key(self, job_id: str) -> str:
        return self.processor.service.keyspace.prefetch_job(job_id)

    async def _publish(self, job: PrefetchJob, *, force: bool = False) -> None:
        """Copy the job's progress to Redis (at most every 0.25 s), so any replica behind a
        load balancer can answer for it."""
        now = time.monotonic()
        if not force and now - self._published.get(job.id, 0.0) < PUBLISH_EVERY_SECONDS:
            return
        self._published[job.id] = now
        document = {**job.to_json(), "updated_ms": int(time.time() * 1000)}
        service = self.processor.service
        try:
            await service.guard(
                service.redis.set(self._job_key(job.id), json.dumps(document), ex=JOB_TTL_SECONDS)
            )
        except (RedisError, OSError) as exc:
            log.debug("prefetch job %s: progress not published: %s", job.id, exc)

    async def progress(self, job_id: str) -> dict[str, Any] | None:
        """A job's progress: this replica's own, else as published by the one running it."""
        job = self.jobs.get(job_id)
        if job is not None:
            return job.to_json()
        service = self.processor.service
        raw = await service.guard(service.redis.get(self._job_key(job_id)))
        if raw is None:
            return None
        document: dict[str, Any] = json.loads(raw)
        return document

    async def warm(self, item: PrefetchItem, *, refresh: bool = False) -> Warmed:
        """One item through the request path's fill, within the concurrency bound."""
        described = item.described
        outgoing = Outgoing(
            method=described.method,
            path=described.path,
            query=described.query,
            headers=self.processor.upstream.outgoing_headers(described.headers, identity=True),
            body=described.body,
        )
        async with self._slots:
            try:
                return await self.processor.warm(
                    described.speech,
                    described.rule,
                    outgoing,
                    content_class=item.content_class,
                    tenant=item.tenant,
                    refresh=refresh,
                )
            except (RedisError, OSError) as exc:
                log.warning("prefetch: the cache store failed: %s", exc)
                key = self.processor.key_for(
                    described.speech, self.processor.tenants.namespace(item.tenant)
                )
                return Warmed(key, "store_error", False)

    # -- keep warm -------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.create_task(
            every(self.keep_warm_interval_seconds, self.rewarm_due, "keep_warm"),
            name="prefetch:keep-warm",
        )

    async def stop(self) -> None:
        if self._loop is not None:
            await cancel_and_wait(self._loop)
            self._loop = None
        for task in list(self._tasks):
            await cancel_and_wait(task)

    async def rewarm_due(self) -> int:
        """One pass over the keep-warm entries; returns how many were re-synthesized."""
        rewarmed = 0
        for hex_key, item in list(self.keep_warm.items()):
            described = item.described
            labels = self.processor.labels_for(
                described.speech, described.rule, item.content_class, item.tenant
            )
            key = self.processor.key_for(
                described.speech, self.processor.tenants.namespace(item.tenant)
            )
            ttl_left = await self.processor.service.ttl_ms(key)
            ttl = self.processor.ttl_for(labels)
            if needs_rewarm(ttl_left, ttl, self.keep_warm_margin_seconds):
                warmed = await self.warm(item, refresh=ttl_left > 0)
                METRICS.prefetched.labels("keep_warm", warmed.result).inc()
                rewarmed += int(warmed.result == "stored")
                if warmed.result not in ("present", "stored"):
                    log.warning("keep-warm of %s failed: %s", hex_key[:12], warmed.result)
        return rewarmed
