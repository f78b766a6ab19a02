"""Writing entries: store one, remove some, purge by selector. Each is one atomic script per
shard that also keeps the index, selectors and counters in step and tells every hot tier."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.compression import CompressionAdvisor, encode
from ..core.keys import CacheKey
from ..core.packing import Codec
from ..observability.metrics import METRICS
from . import schema
from .guard import StoreGuard
from .hot_tier import HotTier
from .keyspace import SELECTOR_DIMENSIONS, SHARDS, Keyspace, shard_of
from .lua import Lua
from .schema import CachedAudio, EntryLabels

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What a put did."""

    stored: bool
    reason: str
    stored_size: int = 0
    original_size: int = 0
    codec: Codec = Codec.NONE


class EntryWrites:
    """The write paths of :class:`proxy.store.service.AudioCacheService`."""

    def __init__(
        self,
        redis: Any,
        keyspace: Keyspace,
        guard: StoreGuard,
        *,
        advisor: CompressionAdvisor,
        codec: Codec,
        compression_level: int,
        stale_grace_ms: int,
        hot: HotTier[CachedAudio] | None,
    ) -> None:
        self.keyspace = keyspace
        self.guard = guard
        self.advisor = advisor
        self.codec = codec
        self.compression_level = compression_level
        self.stale_grace_ms = stale_grace_ms
        self.hot = hot
        self._channel = keyspace.channel()
        self._put = Lua(redis, "put", prelude=True)
        self._remove = Lua(redis, "remove", prelude=True)
        self._purge = Lua(redis, "purge", prelude=True)

    async def put(
        self,
        key: CacheKey,
        audio: bytes,
        *,
        media_type: str,
        ttl_seconds: int,
        labels: EntryLabels,
        headers: Sequence[tuple[str, str]],
    ) -> StoreResult:
        """Store ``audio`` under ``key`` for ``ttl_seconds``, compressed when it pays."""
        base_type = media_type.split(";", 1)[0].strip().lower()
        encoded = await encode(audio, base_type, self.advisor, self.codec, self.compression_level)
        packed = encoded.packed
        if encoded.tried:
            result = "ok" if packed.codec is not Codec.NONE else "not_worth_it"
            METRICS.compression_operations.labels("compress", result).inc()
        if packed.codec is not Codec.NONE:
            saved = packed.original_size - packed.stored_size
            METRICS.compression_bytes_saved.inc(saved)
            METRICS.compression_ratio.observe(packed.original_size / max(packed.stored_size, 1))
        now = int(time.time() * 1000)
        expires = now + ttl_seconds * 1000
        kept_ms = ttl_seconds * 1000 + self.stale_grace_ms  # the key's own TTL in Redis
        fields = schema.entry_fields(
            packed,
            media_type=media_type,
            headers=headers,
            created_ms=now,
            expires_ms=expires,
            ttl_seconds=ttl_seconds,
            labels=labels,
        )
        n = shard_of(key)
        total = await self.guard(
            self._put(
                keys=[*self.keyspace.shard_keys(n), self.keyspace.entry(key)],
                args=[
                    self.keyspace.selector_prefix(n),
                    key.hex,
                    kept_ms,
                    now + kept_ms,  # the sweeper accounts for the key when Redis drops it
                    schema.index_record(packed, labels, now),
                    self._channel,
                    *fields,
                ],
            )
        )
        self.forget_locally([key.hex])
        METRICS.operations.labels("set", "stored").inc()
        log.debug("stored %s (%d bytes, shard total %s)", key.hex, packed.stored_size, total)
        return StoreResult(True, "stored", packed.stored_size, packed.original_size, packed.codec)

    async def remove(self, keys: Iterable[CacheKey], *, reason: str) -> tuple[int, int]:
        """Delete entries with their bookkeeping: (entries removed, bytes freed)."""
        by_shard: dict[int, list[str]] = defaultdict(list)
        for key in keys:
            by_shard[shard_of(key)].append(key.hex)
        removed = freed = 0
        for n, hexes in by_shard.items():
            r, f = await self.guard(
                self._remove(
                    keys=self.keyspace.shard_keys(n),
                    args=[*self._prefixes(n), reason, self._channel, *hexes],
                )
            )
            self.forget_locally(hexes)
            removed += int(r)
            freed += int(f)
        return removed, freed

    async def purge(self, selector: Mapping[str, str], *, limit: int) -> tuple[int, int]:
        """Delete every entry matching all of ``selector`` (every entry when empty), in
        batches of ``limit`` per shard: (entries removed, bytes freed)."""
        for dimension in selector:
            if dimension not in SELECTOR_DIMENSIONS:
                raise ValueError(f"unknown selector {dimension!r}")
        removed = freed = 0
        for n in range(SHARDS):
            sets = [self.keyspace.selector(n, d, v) for d, v in sorted(selector.items())]
            while True:
                r, f = await self.guard(
                    self._purge(
                        keys=self.keyspace.shard_keys(n),
                        args=[*self._prefixes(n), limit, self._channel, *sets],
                    )
                )
                if int(r) and self.hot is not None:
                    self.hot.clear()  # which keys went is only published; purges are rare
                removed += int(r)
                freed += int(f)
                if int(r) < limit:
                    break
        return removed, freed

    def forget_locally(self, hexes: Sequence[str]) -> None:
        """This replica's own hot tier forgets at once (the others hear it published)."""
        if self.hot is not None:
            self.hot.invalidate(hexes)

    def _prefixes(self, n: int) -> tuple[str, str]:
        return self.keyspace.entry_prefix(n), self.keyspace.selector_prefix(n)
