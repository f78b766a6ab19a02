"""The cache's bookkeeping: batched hit counts, the expiry sweep, counters summed over the
shards and their repair, and the index and usage reads that cleanup ranks entries by.

Counters live per shard in ``P:{P.NN}:stats`` (see :mod:`proxy.store.keyspace`): level
counters (what is stored now: entries, bytes, per class and tenant) kept exact by the write
scripts, and lifetime event counts (hits, misses, and removals by reason).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from . import schema
from .guard import StoreGuard
from .keyspace import SHARDS, Keyspace, shard_of_hex
from .lua import Lua

# Shards whose bookkeeping scripts share one round trip (see Ledger.per_shard).
_SHARDS_PER_TRIP = 8

# Counters that describe what is stored now (the rest are lifetime event counts).
LEVEL_COUNTERS = (
    "entries",
    "bytes",
    "original_bytes",
    "compressed_entries",
    "compressed_bytes",
    "compressed_original_bytes",
)


@dataclass
class Totals:
    """Counters summed over every shard."""

    counters: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return self.counters.get(name, 0)

    def grouped(self, kind: str) -> dict[str, dict[str, int]]:
        """``class:welcome_message:bytes`` style counters, grouped by name."""
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for name, value in self.counters.items():
            head, _, rest = name.partition(":")
            if head == kind and rest:
                label, _, metric = rest.rpartition(":")
                out[label][metric] = value
        return dict(out)


class Ledger:
    """Counts and bookkeeping of :class:`proxy.store.service.AudioCacheService`."""

    def __init__(self, redis: Any, keyspace: Keyspace, guard: StoreGuard) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self.guard = guard
        self._touch = Lua(redis, "touch")
        self._sweep = Lua(redis, "sweep", prelude=True)
        self._repair = Lua(redis, "repair", prelude=True)
        # Counted on the hit path, written by flush_counters. Emptied in place, never
        # replaced, so the hit path may hold on to them.
        self.pending_hits: dict[str, int] = {}
        self.pending_misses: dict[int, int] = defaultdict(int)

    async def flush_counters(self) -> int:
        """Write the batched hit counts, last-access times and misses; returns hits written."""
        hits, misses = dict(self.pending_hits), dict(self.pending_misses)
        self.pending_hits.clear()
        self.pending_misses.clear()
        by_shard: dict[int, list[Any]] = defaultdict(list)
        for hex_key, count in hits.items():
            by_shard[shard_of_hex(hex_key)].extend((hex_key, count))
        now = _now_ms()
        calls = [
            (
                [self.keyspace.stats(n)],
                [self.keyspace.entry_prefix(n), now, misses.get(n, 0), *by_shard.get(n, [])],
            )
            for n in set(by_shard) | set(misses)
        ]
        return sum(int(written) for written in await self.per_shard(self._touch, calls))

    async def sweep(self, *, limit: int) -> int:
        """Reconcile entries whose TTL ran out; returns how many were accounted for."""
        now = _now_ms()
        calls = [
            (
                self.keyspace.shard_keys(n),
                [
                    self.keyspace.entry_prefix(n),
                    self.keyspace.selector_prefix(n),
                    now,
                    limit,
                    self.keyspace.flight_bytes(n),
                ],
            )
            for n in range(SHARDS)
        ]
        return sum(int(gone) for gone in await self.per_shard(self._sweep, calls))

    async def per_shard(self, script: Lua, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """``script`` run once per (keys, args). On a plain store they go
        ``_SHARDS_PER_TRIP`` at a time in one round trip (a pipeline, which loads the
        script first if the server lost it): these jobs run every second on every replica,
        and one call after another cost about 2% of a busy replica's CPU. Not all 64 at
        once: a sweep catching up on mass expiry would hold the server for every shard's
        deletions in one go, with the hit path's reads queued behind. On a cluster each
        shard's keys live in a slot of their own; there they run one after another."""
        if not isinstance(self.redis, aioredis.Redis):
            return [await self.guard(script(keys=keys, args=args)) for keys, args in calls]
        results: list[Any] = []
        for start in range(0, len(calls), _SHARDS_PER_TRIP):
            pipe = self.redis.pipeline(transaction=False)
            for keys, args in calls[start : start + _SHARDS_PER_TRIP]:
                await script(keys=keys, args=args, client=pipe)  # queued, not sent
            with script.located_errors():
                results += await self.guard(pipe.execute())
        return results

    async def totals(self) -> Totals:
        """Counters summed over every shard: one pipelined read."""
        pipe = self.redis.pipeline(transaction=False)
        for n in range(SHARDS):
            pipe.hgetall(self.keyspace.stats(n))
        summed: dict[str, int] = defaultdict(int)
        for shard in await self.guard(pipe.execute()):
            for name, value in shard.items():
                summed[name.decode()] += int(value)
        return Totals(dict(summed))

    async def repair(self, *, reason: str | None = None) -> dict[str, Any]:
        """Recompute the counters from the entries that really exist; report the drift.
        With ``reason``, each index record whose entry is gone before its expiry counts
        as a removal for that reason (``evicted``: Redis evicted it)."""
        ghosts = 0
        drift: dict[str, int] = defaultdict(int)
        for n in range(SHARDS):
            args: list[Any] = [self.keyspace.entry_prefix(n), self.keyspace.selector_prefix(n)]
            if reason is not None:
                args += [reason, _now_ms()]
            g, report = await self.guard(self._repair(keys=self.keyspace.shard_keys(n), args=args))
            ghosts += int(g)
            decoded = json.loads(report)
            before = decoded["before"] if isinstance(decoded["before"], dict) else {}
            after = decoded["after"] if isinstance(decoded["after"], dict) else {}
            for name in set(before) | set(after):
                diff = int(after.get(name, 0)) - int(before.get(name, 0))
                if diff:
                    drift[name] += diff
        totals = await self.totals()
        return {
            "ghost_records_removed": ghosts,
            "corrected": {k: v for k, v in drift.items() if k in LEVEL_COUNTERS},
            "entries": totals["entries"],
            "bytes": totals["bytes"],
        }

    async def records(self, shard: int) -> dict[str, dict[str, Any]]:
        """The index records of one shard, as stored."""
        raw: Mapping[bytes, bytes] = await self.guard(
            self.redis.hgetall(self.keyspace.index(shard))
        )
        return {k.decode(): schema.load_record(v) for k, v in raw.items()}

    async def index_page(
        self, shard: int, cursor: int, count: int
    ) -> tuple[int, list[tuple[str, schema.IndexRecord]]]:
        """One HSCAN page of a shard's index: (next cursor, 0 at the end; records). A page
        may repeat keys of an earlier one."""
        cursor, raw = await self.guard(
            self.redis.hscan(self.keyspace.index(shard), cursor, count=count)
        )
        return int(cursor), [(k.decode(), schema.IndexRecord.parse(v)) for k, v in raw.items()]

    async def hit_counts(self, shard: int, hexes: Sequence[str]) -> list[tuple[int, int]]:
        """(hits, last access ms) per key, pipelined; (0, 0) for entries gone."""
        pipe = self.redis.pipeline(transaction=False)
        entries = self.keyspace.entry_prefix(shard)
        for h in hexes:
            pipe.hmget(entries + h, schema.USAGE_FIELDS)
        return [(int(n or 0), int(la or 0)) for n, la in await self.guard(pipe.execute())]


def _now_ms() -> int:
    return int(time.time() * 1000)
