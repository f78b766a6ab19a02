"""AudioCacheService: cached audio and its bookkeeping in Redis.

Layout (``P`` is the key prefix, ``NN`` one of ``SHARDS`` index shards)::

    P:{P.NN}:e:<key>    HASH  one entry: packed audio + metadata, with a TTL
    P:{P.NN}:idx        HASH  key -> JSON record (sizes, codec, labels): survives expiry
    P:{P.NN}:exp        ZSET  key -> expiry time (ms), for the sweeper
    P:{P.NN}:stats      HASH  counters: entries, bytes, compressed..., per class/tenant, hits
    P:{P.NN}:sel:<dim>:<value>  SET  keys by voice/model/tenant/class/route, for purges

Every key of a shard shares one hash tag, so each shard lives in one Redis Cluster slot
and every write is one atomic script. Counters are per shard, so no single key is hot.
A hit is one HMGET; hit counts and last access are batched off the hit path. With a hot
tier (:mod:`proxy.store.hot_tier`) a hot hit is answered from this process's memory; every script
that removes or replaces entries publishes their keys on ``P:invalidate`` as it does so.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.exceptions import RedisError

from ..core.breaker import BreakerState, CircuitBreaker
from ..core.compression import THREAD_THRESHOLD_BYTES, CompressionAdvisor, encode
from ..core.keys import CacheKey
from ..core.packing import Codec, CorruptEntry, read_header, unpack
from ..core.policy import replayable
from ..observability.metrics import METRICS
from ..observability.tally import TALLY
from .batching import ReadBatcher
from .hot_tier import HotTier

log = logging.getLogger(__name__)

T = TypeVar("T")
SHARDS = 64
# Shards whose bookkeeping scripts share one round trip (see _per_shard).
_SHARDS_PER_TRIP = 8
SELECTOR_DIMENSIONS = ("voice", "model", "tenant", "class", "route")
_ENTRY_FIELDS = (b"b", b"ct", b"hd", b"c", b"x", b"cls")

# Shared Lua: keep the index, selectors and counters in step with the entries.
_PRELUDE = """
local function adjust(stats, rec, sign)
  redis.call('HINCRBY', stats, 'entries', sign)
  redis.call('HINCRBY', stats, 'bytes', sign * rec.s)
  redis.call('HINCRBY', stats, 'original_bytes', sign * rec.o)
  if rec.z ~= 0 then
    redis.call('HINCRBY', stats, 'compressed_entries', sign)
    redis.call('HINCRBY', stats, 'compressed_bytes', sign * rec.s)
    redis.call('HINCRBY', stats, 'compressed_original_bytes', sign * rec.o)
  end
  redis.call('HINCRBY', stats, 'class:' .. rec.c .. ':entries', sign)
  redis.call('HINCRBY', stats, 'class:' .. rec.c .. ':bytes', sign * rec.s)
  if rec.t ~= '' then
    redis.call('HINCRBY', stats, 'tenant:' .. rec.t .. ':entries', sign)
    redis.call('HINCRBY', stats, 'tenant:' .. rec.t .. ':bytes', sign * rec.s)
  end
end
local function selectors(shard, rec)
  local out = {}
  local dims = {voice = rec.v, model = rec.m, tenant = rec.t, class = rec.c, route = rec.r}
  for dim, value in pairs(dims) do
    if value ~= nil and value ~= '' then
      table.insert(out, shard .. 'sel:' .. dim .. ':' .. value)
    end
  end
  return out
end
local function forget(shard, stats, idx, exp, key)
  local raw = redis.call('HGET', idx, key)
  redis.call('ZREM', exp, key)
  if not raw then return nil end
  local rec = cjson.decode(raw)
  adjust(stats, rec, -1)
  for _, s in ipairs(selectors(shard, rec)) do redis.call('SREM', s, key) end
  redis.call('HDEL', idx, key)
  return rec
end
local function remove(shard, stats, idx, exp, key, reason)
  local existed = redis.call('DEL', shard .. 'e:' .. key)
  local rec = forget(shard, stats, idx, exp, key)
  if rec then
    redis.call('HINCRBY', stats, reason, 1)
    return rec.s
  end
  if existed == 1 then return 0 end
  return -1
end
"""

# KEYS: stats idx exp entry; ARGV: shard key ttl_ms expires_ms record channel field value...
_PUT = (
    _PRELUDE
    + """
local shard, key = ARGV[1], ARGV[2]
local old = forget(shard, KEYS[1], KEYS[2], KEYS[3], key)
if old then redis.call('HINCRBY', KEYS[1], 'overwritten', 1) end
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], unpack(ARGV, 7))
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call('HSET', KEYS[2], key, ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], key)
local rec = cjson.decode(ARGV[5])
adjust(KEYS[1], rec, 1)
for _, s in ipairs(selectors(shard, rec)) do redis.call('SADD', s, key) end
-- Hot tiers holding the audio this replaces drop it, in the same atomic step.
redis.call('PUBLISH', ARGV[6], key)
return redis.call('HGET', KEYS[1], 'bytes')
"""
)

# KEYS: stats idx exp; ARGV: shard reason channel key... -> {removed, freed bytes}
_REMOVE = (
    _PRELUDE
    + """
local removed, freed, gone = 0, 0, {}
for i = 4, #ARGV do
  local size = remove(ARGV[1], KEYS[1], KEYS[2], KEYS[3], ARGV[i], ARGV[2])
  if size >= 0 then removed = removed + 1; freed = freed + size; table.insert(gone, ARGV[i]) end
end
if removed > 0 then redis.call('PUBLISH', ARGV[3], table.concat(gone, ' ')) end
return {removed, freed}
"""
)

# KEYS: stats idx exp; ARGV: shard now_ms limit -> entries reconciled
_SWEEP = (
    _PRELUDE
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local gone = 0
for _, key in ipairs(due) do
  local ttl = redis.call('PTTL', ARGV[1] .. 'e:' .. key)
  if ttl < 0 then
    redis.call('DEL', ARGV[1] .. 'e:' .. key)
    if forget(ARGV[1], KEYS[1], KEYS[2], KEYS[3], key) then
      redis.call('HINCRBY', KEYS[1], 'expired', 1)
      gone = gone + 1
    end
  else
    -- written by a replica whose clock runs behind: trust Redis's own TTL
    redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + ttl, key)
  end
end
return gone
"""
)

# KEYS: stats; ARGV: shard now_ms misses key count key count ...
_TOUCH = """
local shard, now = ARGV[1], ARGV[2]
local hits = 0
if tonumber(ARGV[3]) > 0 then redis.call('HINCRBY', KEYS[1], 'misses', ARGV[3]) end
for i = 4, #ARGV, 2 do
  local entry = shard .. 'e:' .. ARGV[i]
  local meta = redis.call('HMGET', entry, 'cls', 'tn')
  local cls, tn = meta[1], meta[2]
  if cls then
    redis.call('HINCRBY', entry, 'n', ARGV[i + 1])
    redis.call('HSET', entry, 'la', now)
    redis.call('HINCRBY', KEYS[1], 'class:' .. cls .. ':hits', ARGV[i + 1])
    if tn and tn ~= '' then
      redis.call('HINCRBY', KEYS[1], 'tenant:' .. tn .. ':hits', ARGV[i + 1])
    end
    hits = hits + tonumber(ARGV[i + 1])
  end
end
if hits > 0 then redis.call('HINCRBY', KEYS[1], 'hits', hits) end
return hits
"""

# KEYS: stats idx exp; ARGV: shard limit channel selector-set... -> {removed, freed}
# With no selector sets, takes any indexed keys (clear).
_PURGE = (
    _PRELUDE
    + """
local keys
if #ARGV > 3 then
  keys = redis.call('SINTER', unpack(ARGV, 4))
else
  keys = redis.call('HKEYS', KEYS[2])
end
local removed, freed, limit, gone = 0, 0, tonumber(ARGV[2]), {}
for _, key in ipairs(keys) do
  if removed >= limit then break end
  local size = remove(ARGV[1], KEYS[1], KEYS[2], KEYS[3], key, 'purged')
  if size >= 0 then removed = removed + 1; freed = freed + size; table.insert(gone, key) end
end
if removed > 0 then
  redis.call('PUBLISH', ARGV[3], #ARGV > 3 and table.concat(gone, ' ') or '*')
end
return {removed, freed}
"""
)

# KEYS: stats idx exp; ARGV: shard -> {ghosts removed, JSON of corrected counters}
_REPAIR = (
    _PRELUDE
    + """
local shard = ARGV[1]
local ghosts = 0
local all = redis.call('HGETALL', KEYS[2])
local truth = {}
local function add(name, n) truth[name] = (truth[name] or 0) + n end
for i = 1, #all, 2 do
  local key, rec = all[i], cjson.decode(all[i + 1])
  if redis.call('EXISTS', shard .. 'e:' .. key) == 0 then
    for _, s in ipairs(selectors(shard, rec)) do redis.call('SREM', s, key) end
    redis.call('HDEL', KEYS[2], key)
    redis.call('ZREM', KEYS[3], key)
    ghosts = ghosts + 1
  else
    add('entries', 1); add('bytes', rec.s); add('original_bytes', rec.o)
    if rec.z ~= 0 then
      add('compressed_entries', 1); add('compressed_bytes', rec.s)
      add('compressed_original_bytes', rec.o)
    end
    add('class:' .. rec.c .. ':entries', 1); add('class:' .. rec.c .. ':bytes', rec.s)
    if rec.t ~= '' then
      add('tenant:' .. rec.t .. ':entries', 1); add('tenant:' .. rec.t .. ':bytes', rec.s)
    end
  end
end
local before = {}
local current = redis.call('HGETALL', KEYS[1])
for i = 1, #current, 2 do
  local name = current[i]
  if name == 'entries' or name == 'bytes' or name == 'original_bytes'
     or string.sub(name, 1, 11) == 'compressed_'
     or (string.sub(name, 1, 6) == 'class:' and string.sub(name, -5) ~= ':hits')
     or (string.sub(name, 1, 7) == 'tenant:' and string.sub(name, -5) ~= ':hits') then
    before[name] = tonumber(current[i + 1])
    redis.call('HDEL', KEYS[1], name)
  end
end
for name, n in pairs(truth) do
  if n ~= 0 then redis.call('HSET', KEYS[1], name, n) end
end
return {ghosts, cjson.encode({before = before, after = truth})}
"""
)

# Counters that describe what is stored now (the rest are lifetime event counts).
_LEVEL_COUNTERS = (
    "entries",
    "bytes",
    "original_bytes",
    "compressed_entries",
    "compressed_bytes",
    "compressed_original_bytes",
)


# Errors that mean the store is down or unreachable (others mean a command failed).
_STORE_DOWN = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
)


class CacheUnavailable(RedisError):
    """The store is presumed down; the request path fails open to the upstream."""


def shard_of(key: CacheKey) -> int:
    return int(key.hex[:4], 16) % SHARDS


@dataclass(frozen=True)
class Keyspace:
    """Names of every Redis key this cache uses, under one prefix."""

    prefix: str

    def shard(self, n: int) -> str:
        return f"{self.prefix}:{{{self.prefix}.{n:02d}}}:"

    def entry(self, key: CacheKey) -> str:
        return f"{self.shard(shard_of(key))}e:{key.hex}"

    def shard_keys(self, n: int) -> list[str]:
        base = self.shard(n)
        return [base + "stats", base + "idx", base + "exp"]

    def selector(self, n: int, dimension: str, value: str) -> str:
        return f"{self.shard(n)}sel:{dimension}:{value}"

    def channel(self) -> str:
        """Pub/sub channel for invalidations (deletes, purges) across replicas."""
        return f"{self.prefix}:invalidate"


@dataclass(frozen=True, slots=True)
class EntryLabels:
    """What an entry is, for TTLs, purges, stats and cleanup."""

    content_class: str = "default"
    route: str = ""
    voice: str = ""
    model: str = ""
    tenant: str = ""


@dataclass(frozen=True, slots=True)
class CachedAudio:
    """A hit: the original audio and what a response needs."""

    key: CacheKey
    audio: bytes
    media_type: str
    headers: tuple[tuple[str, str], ...]
    created_ms: int
    expires_ms: int
    content_class: str
    checksum: int
    # What the HTTP layer derived from this entry (validators, header blocks), kept with
    # it so that a hot-tier hit does not derive them again. Not part of its value.
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What a put did."""

    stored: bool
    reason: str
    stored_size: int = 0
    original_size: int = 0
    codec: Codec = Codec.NONE


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """Metadata of one entry, read without touching it."""

    key: str
    size: int
    stored_size: int
    codec: str
    created_ms: int
    expires_ms: int
    ttl_ms: int
    hits: int
    last_access_ms: int
    content_class: str
    tenant: str
    route: str
    voice: str
    model: str
    media_type: str


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


def _now_ms() -> int:
    return int(time.time() * 1000)


def replayable_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream headers replayed on a hit by default (see :func:`proxy.core.policy.replayable`)."""
    return replayable(headers)


@lru_cache(maxsize=1024)
def _replayed(stored: bytes) -> tuple[tuple[str, str], ...]:
    """An entry's replayed upstream headers, from their stored JSON. Entries of one upstream
    store the same few header sets, so each is decoded once, not on every read."""
    decoded = json.loads(stored)
    if not isinstance(decoded, list):
        raise TypeError("replayed headers are not a list")
    return tuple((str(name), str(value)) for name, value in decoded)


class AudioCacheService:
    """Store, fetch and manage cached audio and its metadata in Redis."""

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = "ttsc",
        advisor: CompressionAdvisor | None = None,
        codec: Codec = Codec.ZLIB,
        compression_level: int = 6,
        breaker: CircuitBreaker | None = None,
        hot: HotTier[CachedAudio] | None = None,
        stale_grace_seconds: int = 0,
        reads: Callable[[Sequence[bytes]], Any] | None = None,
    ) -> None:
        self.redis = redis
        self.hot = hot
        # Entries are kept this long past their TTL, to be served if the upstream fails.
        self.stale_grace_ms = stale_grace_seconds * 1000
        self.keyspace = Keyspace(prefix)
        self.advisor = advisor or CompressionAdvisor(True, 100 * 1024, 0.05)
        self.codec = codec
        self.compression_level = compression_level
        self._put = redis.register_script(_PUT)
        self._remove = redis.register_script(_REMOVE)
        self._sweep = redis.register_script(_SWEEP)
        self._touch = redis.register_script(_TOUCH)
        self._purge = redis.register_script(_PURGE)
        self._repair = redis.register_script(_REPAIR)
        self._pending_hits: dict[str, int] = {}
        self._pending_misses: dict[int, int] = defaultdict(int)
        # This replica's own lookups since it started (the shared counters are lifetime).
        self.started_ms = _now_ms()
        self.session_hits = 0
        self.session_misses = 0
        # Stored bytes as last read from Redis plus what this replica wrote since.
        self.approx_bytes = 0
        self.size_changed = asyncio.Event()
        self.breaker = breaker or CircuitBreaker()
        self._channel = self.keyspace.channel()
        # The hit path's HMGETs: ``reads(fields)`` when given (see proxy.store.reads).
        self._reads = (
            reads(_ENTRY_FIELDS) if reads is not None else ReadBatcher(redis, _ENTRY_FIELDS)
        )
        # Labelled metric children bound once: labels() costs a lock and a lookup per call.
        self._hit = METRICS.operations.labels("get", "hit")
        self._miss = METRICS.operations.labels("get", "miss")

    async def close_reads(self) -> None:
        """Close the hit path's own connection, if it has one."""
        close = getattr(self._reads, "aclose", None)
        if close is not None:
            await close()

    async def _guarded(self, call: Awaitable[T]) -> T:
        """Run one store call through the circuit breaker: refused at once while it is open."""
        breaker = self.breaker
        if not breaker.allow():
            if inspect.iscoroutine(call):
                call.close()
            raise CacheUnavailable("the cache store is unavailable (circuit open)")
        was_open = breaker.is_open
        try:
            result = await call
        except (RedisError, OSError) as exc:
            if isinstance(exc, RedisError) and not isinstance(exc, _STORE_DOWN):
                breaker.success()  # the server answered: it is up, the command failed
            else:
                breaker.failure()
            raise
        else:
            breaker.success()
            return result
        finally:
            if breaker.is_open != was_open:
                METRICS.redis_circuit_open.set(1 if breaker.is_open else 0)

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
            found = await self.fetch(key)
            if found is not None:
                hot.offer(key.hex, found, generation, _now_ms())
        else:
            found = await self.fetch(key)
        stale = None
        if found is not None and self.stale_grace_ms and found.expires_ms <= _now_ms():
            stale, found = found, None
        if found is None:
            self._pending_misses[shard_of(key)] += 1
            self.session_misses += 1
            self._miss.inc()
        else:
            self._count_hit(key)
        return found, stale

    def _usable_hot(self) -> HotTier[CachedAudio] | None:
        """The hot tier, when it may be used: only while invalidations reach it and the
        store is healthy (with the breaker open, deletes made elsewhere could go unheard)."""
        hot = self.hot
        if hot is not None and hot.live and self.breaker.state is BreakerState.CLOSED:
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
        found = await self.fetch(key)
        if found is not None and found.expires_ms <= _now_ms():
            return None
        return found

    async def fetch(self, key: CacheKey) -> CachedAudio | None:
        """Read and verify an entry without counting it (stale copies included)."""
        values = await self._guarded(self._reads.hmget(self.keyspace.entry(key)))
        body, media_type, headers, created, expires, content_class = values
        if body is None:
            return None
        try:
            codec, size, checksum = read_header(body)
            if codec is not Codec.NONE and size >= THREAD_THRESHOLD_BYTES:
                audio = await asyncio.to_thread(unpack, body)
            else:
                audio = unpack(body)
            if codec is not Codec.NONE:
                METRICS.compression_operations.labels("decompress", "ok").inc()
            return CachedAudio(
                key=key,
                audio=audio,
                media_type=(media_type or b"application/octet-stream").decode(),
                headers=_replayed(headers or b"[]"),
                created_ms=int(created or 0),
                expires_ms=int(expires or 0),
                content_class=(content_class or b"default").decode(),
                checksum=checksum,
            )
        except (CorruptEntry, ValueError, TypeError) as exc:
            log.warning("corrupt cache entry %s deleted: %s", key.hex, exc)
            METRICS.compression_operations.labels("decompress", "corrupt").inc()
            await self.remove([key], reason="corrupt")
            return None

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
        now = _now_ms()
        expires = now + ttl_seconds * 1000
        kept_ms = ttl_seconds * 1000 + self.stale_grace_ms  # the key's own TTL in Redis
        record = json.dumps(
            {
                "s": packed.stored_size,
                "o": packed.original_size,
                "z": int(packed.codec),
                "c": labels.content_class,
                "t": labels.tenant,
                "v": labels.voice,
                "m": labels.model,
                "r": labels.route,
                "cr": now,
            },
            separators=(",", ":"),
        )
        fields: list[Any] = [
            "b", packed.data,
            "ct", media_type,
            "hd", json.dumps(list(headers), separators=(",", ":")),
            "c", now,
            "x", expires,
            "t", ttl_seconds,
            "cls", labels.content_class,
            "n", 0,
            "la", now,
            "os", packed.original_size,
            "ss", packed.stored_size,
            "cd", packed.codec.name.lower(),
            "ck", packed.checksum,
            "r", labels.route,
            "v", labels.voice,
            "m", labels.model,
            "tn", labels.tenant,
        ]  # fmt: skip
        n = shard_of(key)
        total = await self._guarded(
            self._put(
                keys=[*self.keyspace.shard_keys(n), self.keyspace.entry(key)],
                args=[
                    self.keyspace.shard(n),
                    key.hex,
                    kept_ms,
                    now + kept_ms,  # the sweeper accounts for the key when Redis drops it
                    record,
                    self._channel,
                    *fields,
                ],
            )
        )
        self._forget_locally([key.hex])
        self.approx_bytes += packed.stored_size
        self.size_changed.set()
        METRICS.operations.labels("set", "stored").inc()
        log.debug("stored %s (%d bytes, shard total %s)", key.hex, packed.stored_size, total)
        return StoreResult(True, "stored", packed.stored_size, packed.original_size, packed.codec)

    async def remove(self, keys: Iterable[CacheKey], *, reason: str = "deleted") -> tuple[int, int]:
        """Delete entries with their bookkeeping: (entries removed, bytes freed)."""
        by_shard: dict[int, list[str]] = defaultdict(list)
        for key in keys:
            by_shard[shard_of(key)].append(key.hex)
        removed = freed = 0
        for n, hexes in by_shard.items():
            r, f = await self._remove(
                keys=self.keyspace.shard_keys(n),
                args=[self.keyspace.shard(n), reason, self._channel, *hexes],
            )
            self._forget_locally(hexes)
            removed += int(r)
            freed += int(f)
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
        for dimension in selector:
            if dimension not in SELECTOR_DIMENSIONS:
                raise ValueError(f"unknown selector {dimension!r}")
        removed = freed = 0
        for n in range(SHARDS):
            sets = [self.keyspace.selector(n, d, v) for d, v in sorted(selector.items())]
            while True:
                r, f = await self._purge(
                    keys=self.keyspace.shard_keys(n),
                    args=[self.keyspace.shard(n), limit, self._channel, *sets],
                )
                if int(r) and self.hot is not None:
                    self.hot.clear()  # which keys went is only published; purges are rare
                removed += int(r)
                freed += int(f)
                if int(r) < limit:
                    break
        self.approx_bytes = max(0, self.approx_bytes - freed)
        return removed, freed

    def _forget_locally(self, hexes: Sequence[str]) -> None:
        """This replica's own hot tier forgets at once (the others hear it published)."""
        if self.hot is not None:
            self.hot.invalidate(hexes)

    # -- bookkeeping ----------------------------------------------------------------

    async def flush_counters(self) -> int:
        """Write the batched hit counts, last-access times and misses; returns hits written."""
        hits, self._pending_hits = self._pending_hits, {}
        misses, self._pending_misses = self._pending_misses, defaultdict(int)
        by_shard: dict[int, list[Any]] = defaultdict(list)
        for hex_key, count in hits.items():
            by_shard[int(hex_key[:4], 16) % SHARDS].extend((hex_key, count))
        now = _now_ms()
        calls = [
            (
                self.keyspace.shard_keys(n)[:1],
                [self.keyspace.shard(n), now, misses.get(n, 0), *by_shard.get(n, [])],
            )
            for n in set(by_shard) | set(misses)
        ]
        return sum(int(written) for written in await self._per_shard(self._touch, calls))

    async def sweep(self, *, limit: int = 500) -> int:
        """Reconcile entries whose TTL ran out; returns how many were accounted for."""
        now = _now_ms()
        calls = [
            (self.keyspace.shard_keys(n), [self.keyspace.shard(n), now, limit])
            for n in range(SHARDS)
        ]
        return sum(int(gone) for gone in await self._per_shard(self._sweep, calls))

    async def _per_shard(self, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """``script`` run once per (keys, args). On a plain store they go
        ``_SHARDS_PER_TRIP`` at a time in one round trip (a pipeline, which loads the
        script first if the server lost it): these jobs run every second on every replica,
        and one call after another cost about 2% of a busy replica's CPU. Not all 64 at
        once: a sweep catching up on mass expiry would hold the server for every shard's
        deletions in one go, with the hit path's reads queued behind. On a cluster each
        shard's keys live in a slot of their own; there they run one after another."""
        if not isinstance(self.redis, aioredis.Redis):
            return [await script(keys=keys, args=args) for keys, args in calls]
        results: list[Any] = []
        for start in range(0, len(calls), _SHARDS_PER_TRIP):
            pipe = self.redis.pipeline(transaction=False)
            for keys, args in calls[start : start + _SHARDS_PER_TRIP]:
                await script(keys=keys, args=args, client=pipe)  # queued, not sent
            results += await pipe.execute()
        return results

    async def totals(self) -> Totals:
        """Counters summed over every shard: one pipelined read."""
        pipe = self.redis.pipeline(transaction=False)
        for n in range(SHARDS):
            pipe.hgetall(self.keyspace.shard_keys(n)[0])
        summed: dict[str, int] = defaultdict(int)
        for shard in await pipe.execute():
            for name, value in shard.items():
                summed[name.decode()] += int(value)
        self.approx_bytes = summed.get("bytes", 0)
        return Totals(dict(summed))

    async def repair(self) -> dict[str, Any]:
        """Recompute the counters from the entries that really exist; report the drift."""
        ghosts = 0
        drift: dict[str, int] = defaultdict(int)
        for n in range(SHARDS):
            g, report = await self._repair(
                keys=self.keyspace.shard_keys(n), args=[self.keyspace.shard(n)]
            )
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
            "corrected": {k: v for k, v in drift.items() if k in _LEVEL_COUNTERS},
            "entries": totals["entries"],
            "bytes": totals["bytes"],
        }

    async def info(self, key: CacheKey) -> EntryInfo | None:
        """An entry's metadata; reads only, so TTL, hits and recency are untouched."""
        entry = self.keyspace.entry(key)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(entry, [b"os", b"ss", b"cd", b"c", b"x", b"n", b"la", b"cls", b"tn", b"r",
                           b"v", b"m", b"ct"])  # fmt: skip
        pipe.pttl(entry)
        values, ttl = await pipe.execute()
        if values[0] is None or ttl < 0:
            return None
        text = [v.decode() if v is not None else "" for v in values]
        return EntryInfo(
            key=key.hex,
            size=int(text[0]),
            stored_size=int(text[1]),
            codec=text[2],
            created_ms=int(text[3]),
            expires_ms=int(text[4]),
            ttl_ms=max(0, int(text[4]) - _now_ms()),  # freshness left (a stale copy has none)
            hits=int(text[5] or 0) + self._pending_hits.get(key.hex, 0),
            last_access_ms=int(text[6] or 0),
            content_class=text[7],
            tenant=text[8],
            route=text[9],
            voice=text[10],
            model=text[11],
            media_type=text[12],
        )

    async def ttl_ms(self, key: CacheKey) -> int:
        """Remaining freshness in ms (0 when only kept stale, -2 when absent), without
        touching the entry."""
        expires = await self.redis.hget(self.keyspace.entry(key), "x")
        if expires is None:
            return -2
        return max(0, int(expires) - _now_ms())

    async def records(self, shard: int) -> dict[str, dict[str, Any]]:
        """The index records of one shard (for cleanup)."""
        raw: Mapping[bytes, bytes] = await self.redis.hgetall(self.keyspace.shard_keys(shard)[1])
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    async def hit_counts(self, shard: int, hexes: Sequence[str]) -> list[tuple[int, int]]:
        """(hits, last access ms) per key, pipelined."""
        pipe = self.redis.pipeline(transaction=False)
        base = self.keyspace.shard(shard)
        for h in hexes:
            pipe.hmget(base + "e:" + h, [b"n", b"la"])
        out = []
        for n, la in await pipe.execute():
            out.append((int(n or 0), int(la or 0)))
        return out
