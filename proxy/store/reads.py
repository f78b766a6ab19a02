"""Reading entries: a hit's audio (one HMGET, verified), an entry's metadata, its freshness.
None of these touch the entry: TTL, hits and recency stay as they are."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..core.compression import decode_in_thread
from ..core.keys import CacheKey
from ..core.packing import Codec, CorruptEntry, decode, read_header
from ..observability.metrics import METRICS
from . import schema
from .batching import ReadBatcher
from .guard import StoreGuard
from .keyspace import Keyspace
from .pipelined import PipelinedReads
from .schema import CachedAudio, EntryInfo

log = logging.getLogger(__name__)

MEMO_ENTRIES = 1024  # entries whose derived headers are kept between reads (~1 KB each)


class EntryReads:
    """The read paths of :class:`proxy.store.service.AudioCacheService`."""

    def __init__(
        self,
        redis: Any,
        keyspace: Keyspace,
        guard: StoreGuard,
        *,
        on_corrupt: Callable[[CacheKey], Awaitable[object]],
        reads: Callable[[Sequence[bytes]], Any] | None = None,
    ) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self.guard = guard
        self.on_corrupt = on_corrupt
        # The hit path's HMGETs: ``reads(fields)`` when given (see proxy.store.pipelined).
        fields = schema.HIT_FIELDS
        self._hits = reads(fields) if reads is not None else ReadBatcher(redis, fields)
        # The hit path's own connection, when it has one: a miss's flight lead goes with
        # its lookup there, in the same write (see proxy.request.coalescing).
        self.pipelined = self._hits if isinstance(self._hits, PipelinedReads) else None
        # Each read makes a new CachedAudio; what the HTTP layer derived from the last read
        # of the same entry (its serialized headers: ~16 µs a hit) is handed to the next.
        self._memos: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._decoded = METRICS.compression_operations.labels("decompress", "ok")

    async def aclose(self) -> None:
        """Close the hit path's own connection, if it has one."""
        close = getattr(self._hits, "aclose", None)
        if close is not None:
            await close()

    async def fetch(self, key: CacheKey) -> CachedAudio | None:
        """Read and verify an entry (stale copies included). A corrupt one is handed to
        ``on_corrupt`` and reads as absent."""
        values = await self.guard(self._hits.hmget(self.keyspace.entry(key)))
        body = values[0]
        if body is None:
            return None
        try:
            codec, size, checksum = read_header(body)
            if decode_in_thread(codec, size):
                audio = await asyncio.to_thread(decode, body, codec, size, checksum)
            else:
                audio = decode(body, codec, size, checksum)
            if codec is not Codec.NONE:
                self._decoded.inc()
            memo = self._memo(key, schema.memo_identity(values, size, checksum))
            return schema.cached_audio(key, values, audio, checksum, memo)
        except (CorruptEntry, ValueError, TypeError) as exc:
            log.warning("corrupt cache entry %s deleted: %s", key.hex, exc)
            METRICS.compression_operations.labels("decompress", "corrupt").inc()
            await self.on_corrupt(key)
            return None

    def _memo(self, key: CacheKey, identity: tuple[Any, ...]) -> dict[str, Any]:
        memos = self._memos
        kept = memos.get(key.hex)
        if kept is not None and kept[0] == identity:
            return kept[1]
        if kept is None and len(memos) >= MEMO_ENTRIES:
            del memos[next(iter(memos))]  # the oldest
        memo: dict[str, Any] = {}
        memos[key.hex] = (identity, memo)
        return memo

    async def info(self, key: CacheKey, *, pending_hits: int = 0) -> EntryInfo | None:
        """An entry's metadata, or None when it is gone."""
        entry = self.keyspace.entry(key)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(entry, schema.INFO_FIELDS)
        pipe.pttl(entry)
        values, ttl = await self.guard(pipe.execute())
        if values[0] is None or ttl < 0:
            return None
        now = int(time.time() * 1000)
        return schema.entry_info(key, values, pending_hits=pending_hits, now_ms=now)

    async def ttl_ms(self, key: CacheKey) -> int:
        """Remaining freshness in ms (0 when only kept stale, -2 when absent)."""
        expires = await self.guard(self.redis.hget(self.keyspace.entry(key), schema.EXPIRES))
        if expires is None:
            return -2
        return max(0, int(expires) - int(time.time() * 1000))
