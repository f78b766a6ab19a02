"""AudioCacheService: cached audio and its bookkeeping in Redis.

The facade the rest of the proxy uses. It keeps this replica's own state (the hot tier,
the approximate stored size, this process's hit and miss counts) and hands the store's
I/O to its parts, every call through one circuit breaker (:mod:`proxy.store.guard`):

- :mod:`proxy.store.reads` — a hit's one HMGET, an entry's metadata and freshness;
- :mod:`proxy.store.writes` — put, remove and purge, one atomic script per shard;
- :mod:`proxy.store.ledger` — batched hit counts, the expiry sweep, totals and repair.

Key names are :mod:`proxy.store.keyspace`'s, the entry's fields and index record
:mod:`proxy.store.schema`'s, the Lua scripts the files in ``proxy/store/scripts``. A hit is
one HMGET; hit counts and last access are batched off the hit path. With a hot tier
(:mod:`proxy.store.hot_tier`) a hot hit is answered from this process's memory; every
script that removes or replaces entries publishes their keys on ``P:invalidate``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..core.breaker import BreakerState, CircuitBreaker
from ..core.compression import CompressionAdvisor
from ..core.keys import CacheKey
from ..core.packing import Codec
from ..observability.metrics import METRICS
from ..observability.tally import TALLY
from .guard import CacheUnavailable, StoreGuard
from .hot_tier import HotTier
from .keyspace import SELECTOR_DIMENSIONS, SHARDS, Keyspace, shard_of
from .ledger import Ledger, Totals
from .memory_policy import EvictionWatch
from .pipelined import PipelinedReads
from .reads import EntryReads
from .schema import CachedAudio, EntryInfo, EntryLabels, IndexRecord, replayable_headers
from .writes import EntryWrites, StoreResult

# Callers import these from here, as they always have.
__all__ = [
    "SELECTOR_DIMENSIONS",
    "SHARDS",
    "AudioCacheService",
    "CacheUnavailable",
    "CachedAudio",
    "EntryInfo",
    "EntryLabels",
    "Keyspace",
    "StoreResult",
    "Totals",
    "replayable_headers",
    "shard_of",
]


def _now_ms() -> int:
    return int(time.time() * 1000)


class AudioCacheService:
    """Store, fetch and manage cached audio and its metadata in Redis."""

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = "ttsc",
        advisor: CompressionAdvisor | None = None,
        codec: Codec = Codec.ZSTD,
        compression_level: int = 6,
        breaker: CircuitBreaker | None = None,
        hot: HotTier[CachedAudio] | None = None,
        stale_grace_seconds: int = 0,
        reads: Callable[[Sequence[bytes]], Any] | None = None,
    ) -> None:
        self.redis = redis
        self.hot = hot
        self._hot_trusted_since = 0  # the breaker's opened_count the hot tier's entries date from
        # Entries are kept this long past their TTL, to be served if the upstream fails.
        self.stale_grace_ms = stale_grace_seconds * 1000
        self.keyspace = Keyspace(prefix)
        self.breaker = breaker or CircuitBreaker()
        self.guard = StoreGuard(self.breaker)
        self._writes = EntryWrites(
            redis,
            self.keyspace,
            self.guard,
            advisor=advisor or CompressionAdvisor(True, 100 * 1024, 0.05),
            codec=codec,
            compression_level=compression_level,
            stale_grace_ms=self.stale_grace_ms,
            hot=hot,
        )
        self._reads = EntryReads(
            redis,
            self.keyspace,
            self.guard,
            on_corrupt=lambda key: self.remove([key], reason="corrupt"),
            reads=reads,
        )
        self._ledger = Ledger(redis, self.keyspace, self.guard)
        self._pending_hits = self._ledger.pending_hits
        self._pending_misses = self._ledger.pending_misses
        # Entries Redis evicts (maxmemory) leave index records behind: repaired soon after.
        self.evictions = EvictionWatch(
            redis, lambda: self.repair(reason="evicted"), guard=self.guard
        )
        # This replica's own lookups since it started (the shared counters are lifetime).
        self.started_ms = _now_ms()
        self.session_hits = 0
        self.session_misses = 0
        # Stored bytes as last read from Redis plus what this replica wrote since.
        self.approx_bytes = 0
        self.size_changed = asyncio.Event()
        # Labelled metric children bound once: labels() costs a lock and a lookup per call.
        self._hit = METRICS.operations.labels("get", "hit")
        self._miss = METRICS.operations.labels("get", "miss")

    @property
    def advisor(self) -> CompressionAdvisor:
        return self._writes.advisor

    @property
    def codec(self) -> Codec:
        return self._writes.codec

    @property
    def compression_level(self) -> int:
        return self._writes.compression_level

    async def close_reads(self) -> None:
        """Close the hit path's own connection, if it has one."""
        await self._reads.aclose()

    # -- the hit path ---------------------------------------------------------------

    async def get(self, key: CacheKey) -> CachedAudio | None:
        """The cached audio for ``key``, or None. Counts the hit or miss (batched)."""
        fresh, _ = await self.get_or_stale(key)
        return fresh

    def hot_hit(self, key: CacheKey) -> CachedAudio | None:
        """The entry from the hot tier, counted as a hit; None when the tier cannot answer
        (then ``get_or_stale(key, hot_tried=True)``: the tier has seen this request)."""
        hot = self._usable_hot()
        if hot is None:
            return None
        found = hot.get(key.hex, _now_ms())
        if found is not None:
            self._count_hit(key)
        return found

    async def get_or_stale(
        self, key: CacheKey, *, hot_tried: bool = False
    ) -> tuple[CachedAudio | None, CachedAudio | None]:
        """(fresh audio, None) on a hit; (None, expired audio kept for its grace period, or
        None) on a miss. Counts the hit or miss (batched)."""
        hot = self._usable_hot()
        if hot is not None:
            found = None if hot_tried else hot.get(key.hex, _now_ms())
            if found is not None:
                self._count_hit(key)
                return found, None
            generation = hot.generation
            found = await self._reads.fetch(key)
            if found is not None:
                hot.offer(key.hex, found, generation, _now_ms())
        else:
            found = await self._reads.fetch(key)
        stale = None
        if found is not None and self.stale_grace_ms and found.expires_ms <= _now_ms():
            stale, found = found, None
        if found is None:
            self.count_miss(key)
        else:
            self._count_hit(key)
        return found, stale

    async def peek(self, key: CacheKey) -> CachedAudio | None:
        """Fresh audio for ``key`` from the hot tier or the store, not counted (see
        :meth:`count_lookup`): read on a guess, before it is known to be wanted."""
        hot = self._usable_hot()
        if hot is not None:
            found = hot.get(key.hex, _now_ms())
            if found is not None:
                return found
            generation = hot.generation
            found = await self._reads.fetch(key)
            if found is not None:
                hot.offer(key.hex, found, generation, _now_ms())
        else:
            found = await self._reads.fetch(key)
        if found is not None and found.expires_ms <= _now_ms():
            return None
        return found

    def count_lookup(self, key: CacheKey, *, hit: bool) -> None:
        """Count a :meth:`peek` that was used, as a hit or a miss (batched)."""
        if hit:
            self._count_hit(key)
        else:
            self.count_miss(key)

    async def count_sightings(self, keys: Sequence[CacheKey], window_seconds: int) -> list[int]:
        """One more miss for each key, and how many each has had in the window (one
        round trip; each counter lives ``window_seconds`` from its first miss)."""
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            name = self.keyspace.sightings(key)
            pipe.incr(name)
            pipe.expire(name, window_seconds, nx=True)
        replies = await self.guard(pipe.execute())
        return [int(n) for n in replies[::2]]

    def count_miss(self, key: CacheKey) -> None:
        """A request for ``key`` that the cache did not answer (batched)."""
        self._pending_misses[shard_of(key)] += 1
        self.session_misses += 1
        self._miss.inc()

    def _usable_hot(self) -> HotTier[CachedAudio] | None:
        """The hot tier, when it may be used: only while invalidations reach it and the
        store is healthy (with the breaker open, deletes made elsewhere could go unheard)."""
        hot = self.hot
        if hot is not None and hot.live and self.breaker.state is BreakerState.CLOSED:
            if self.breaker.opened_count != self._hot_trusted_since:
                # The store was out of reach: on a cluster, a failover that may have lost
                # entries this tier holds, while the invalidation channel (on another node)
                # stayed up. No purge would find them to invalidate: start empty.
                self._hot_trusted_since = self.breaker.opened_count
                hot.clear()
            return hot
        return None

    def _count_hit(self, key: CacheKey) -> None:
        pending = self._pending_hits
        pending[key.hex] = pending.get(key.hex, 0) + 1
        self.session_hits += 1
        TALLY.add(self._hit)

    async def fetch_fresh(self, key: CacheKey) -> CachedAudio | None:
        """Read and verify an entry without counting it; None when only a stale copy is
        kept (see ``stale_grace_seconds``)."""
        found = await self._reads.fetch(key)
        if found is not None and found.expires_ms <= _now_ms():
            return None
        return found

    @property
    def pipelined(self) -> PipelinedReads | None:
        """The hit path's own pipelined connection, if it has one."""
        return self._reads.pipelined

    async def fetch(self, key: CacheKey) -> CachedAudio | None:
        """Read and verify an entry without counting it (stale copies included)."""
        return await self._reads.fetch(key)

    # -- writes ---------------------------------------------------------------------

    async def put(
        self,
        key: CacheKey,
        audio: bytes,
        *,
        media_type: str,
        ttl_seconds: int,
        labels: EntryLabels,
        headers: Sequence[tuple[str, str]] = (),
    ) -> StoreResult:
        """Store ``audio`` under ``key`` for ``ttl_seconds``, compressed when it pays."""
        result = await self._writes.put(
            key, audio, media_type=media_type, ttl_seconds=ttl_seconds, labels=labels,
            headers=headers,
        )  # fmt: skip
        self.approx_bytes += result.stored_size
        self.size_changed.set()
        return result

    async def remove(self, keys: Iterable[CacheKey], *, reason: str = "deleted") -> tuple[int, int]:
        """Delete entries with their bookkeeping: (entries removed, bytes freed)."""
        removed, freed = await self._writes.remove(keys, reason=reason)
        self.approx_bytes = max(0, self.approx_bytes - freed)
        return removed, freed

    async def delete(self, key: CacheKey) -> bool:
        """Delete one entry; True if it was there."""
        removed, _ = await self.remove([key])
        return removed > 0

    async def purge(self, *, limit: int = 1000, **selector: str) -> tuple[int, int]:
        """Delete every entry matching all given selectors (voice=, model=, tenant=,
        class=, route=); with none, every entry. Runs in batches of ``limit`` per shard."""
        return await self.purge_matching(selector, limit=limit)

    async def purge_matching(
        self, selector: Mapping[str, str], *, limit: int = 1000
    ) -> tuple[int, int]:
        """:meth:`purge` with the selectors as a mapping."""
        removed, freed = await self._writes.purge(selector, limit=limit)
        self.approx_bytes = max(0, self.approx_bytes - freed)
        return removed, freed

    # -- bookkeeping ----------------------------------------------------------------

    async def flush_counters(self) -> int:
        """Write the batched hit counts, last-access times and misses; returns hits written."""
        return await self._ledger.flush_counters()

    async def sweep(self, *, limit: int = 500) -> int:
        """Reconcile entries whose TTL ran out, and those Redis evicted; returns how many
        expired entries were accounted for."""
        swept = await self._ledger.sweep(limit=limit)
        await self.evictions.check()
        return swept

    async def totals(self) -> Totals:
        """Counters summed over every shard: one pipelined read."""
        totals = await self._ledger.totals()
        self.approx_bytes = totals["bytes"]
        return totals

    async def repair(self, *, reason: str | None = None) -> dict[str, Any]:
        """Recompute the counters from the entries that really exist; report the drift.
        With ``reason``, entries found gone before their expiry count as removed for it."""
        report = await self._ledger.repair(reason=reason)
        self.approx_bytes = int(report["bytes"])
        return report

    async def info(self, key: CacheKey) -> EntryInfo | None:
        """An entry's metadata; reads only, so TTL, hits and recency are untouched."""
        return await self._reads.info(key, pending_hits=self._pending_hits.get(key.hex, 0))

    async def ttl_ms(self, key: CacheKey) -> int:
        """Remaining freshness in ms (0 when only kept stale, -2 when absent), without
        touching the entry."""
        return await self._reads.ttl_ms(key)

    async def records(self, shard: int) -> dict[str, dict[str, Any]]:
        """The index records of one shard (for cleanup)."""
        return await self._ledger.records(shard)

    async def index_page(
        self, shard: int, cursor: int = 0, *, count: int = 250
    ) -> tuple[int, list[tuple[str, IndexRecord]]]:
        """One page of a shard's index records (HSCAN): (next cursor, 0 once done; records,
        which may repeat keys of an earlier page)."""
        return await self._ledger.index_page(shard, cursor, count)

    async def hit_counts(self, shard: int, hexes: Sequence[str]) -> list[tuple[int, int]]:
        """(hits, last access ms) per key, pipelined."""
        return await self._ledger.hit_counts(shard, hexes)
