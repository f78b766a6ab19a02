"""Every Redis key name and channel of the cache, built here and nowhere else (pure).

Layout (``P`` is the key prefix, ``NN`` one of ``SHARDS`` shards)::

    P:{P.NN}:e:<key>            HASH    one entry, fields in proxy.store.schema; has a TTL
    P:{P.NN}:idx                HASH    key -> index record (proxy.store.schema): outlives it
    P:{P.NN}:exp                ZSET    key -> expiry time (ms), for the sweeper
    P:{P.NN}:stats              HASH    counters: entries, bytes, per class/tenant, hits...
    P:{P.NN}:sel:<dim>:<value>  SET     keys by voice/model/tenant/class/route, for purges
    P:{P.NN}:fl:<key>           STRING  cross-replica fill: the leader's lock token
    P:{P.NN}:fs:<key>           STREAM  cross-replica fill: the leader's answer
    P:{P.NN}:ff:<key>           STRING  cross-replica fill: how many replicas follow it
    P:{P.NN}:sg:<key>           STRING  segment caching: how many requests missed this piece
    P:{P.NN}:fsb                HASH    stream key -> audio bytes counted in it (stats'
                                        stream_bytes_held), until the sweep finds it gone
    P:invalidate                channel keys removed or replaced, for every hot tier
    P:cleanup:lock              STRING  the cleaning replica's lock token
    P:cleanup:history           HASH    cleanup runs of every replica, and the last report
    P:prefetch:job:<id>         STRING  a prefetch job's progress (JSON), kept a day
    P:limit:{<who>}:<b>:<n>     STRING  one client's or tenant's budget <b> in window <n>
    P:cred:<digest>             STRING  an upstream credential the upstream accepted lately
    P:key-secret                STRING  the key secret, when the operator set none

Every key of a shard shares one hash tag, so each shard lives in one Redis Cluster slot and
each of its scripts is atomic there; counters are per shard, so no single key is hot. The
Lua scripts name no key themselves: they get a shard's entry and selector prefixes as
arguments and append a cache key (or ``<dim>:<value>``), exactly as :meth:`Keyspace.entry`
and :meth:`Keyspace.selector` do.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..core.keys import CacheKey

SHARDS = 64
SELECTOR_DIMENSIONS = ("voice", "model", "tenant", "class", "route")


def shard_of_hex(hex_key: str) -> int:
    """The shard of a cache key given as its hex digest."""
    return int(hex_key[:4], 16) % SHARDS


def shard_of(key: CacheKey) -> int:
    """The shard whose index, counters and hash tag ``key`` belongs to."""
    return shard_of_hex(key.hex)


@dataclass(frozen=True)
class Keyspace:
    """Names of every Redis key this cache uses, under one prefix."""

    prefix: str

    # -- one shard (one hash tag, one cluster slot) -------------------------------------

    def shard(self, n: int) -> str:
        """What every key of shard ``n`` starts with, its hash tag included."""
        return f"{self.prefix}:{{{self.prefix}.{n:02d}}}:"

    def entry_prefix(self, n: int) -> str:
        """Entries of shard ``n`` are this followed by their key's hex."""
        return self.shard(n) + "e:"

    @cached_property
    def _entry_prefixes(self) -> tuple[str, ...]:
        # Built once: every hit names its entry.
        return tuple(self.entry_prefix(n) for n in range(SHARDS))

    def entry(self, key: CacheKey) -> str:
        return self._entry_prefixes[shard_of_hex(key.hex)] + key.hex

    def stats(self, n: int) -> str:
        return self.shard(n) + "stats"

    def index(self, n: int) -> str:
        return self.shard(n) + "idx"

    def expiry(self, n: int) -> str:
        return self.shard(n) + "exp"

    def shard_keys(self, n: int) -> list[str]:
        """[stats, index, expiry] of shard ``n``: the KEYS of its bookkeeping scripts."""
        return [self.stats(n), self.index(n), self.expiry(n)]

    def selector_prefix(self, n: int) -> str:
        """Selector sets of shard ``n`` are this followed by ``<dimension>:<value>``."""
        return self.shard(n) + "sel:"

    def selector(self, n: int, dimension: str, value: str) -> str:
        return f"{self.selector_prefix(n)}{dimension}:{value}"

    # -- one key's cross-replica fill (in the entry's shard) ----------------------------

    def flight_lock(self, key: CacheKey) -> str:
        return f"{self.shard(shard_of(key))}fl:{key.hex}"

    def flight_stream(self, key: CacheKey) -> str:
        return f"{self.shard(shard_of(key))}fs:{key.hex}"

    def flight_followers(self, key: CacheKey) -> str:
        return f"{self.shard(shard_of(key))}ff:{key.hex}"

    def sightings(self, key: CacheKey) -> str:
        """A piece's miss counter (``segment_store_after_sightings``); has a TTL."""
        return f"{self.shard(shard_of(key))}sg:{key.hex}"

    def flight_bytes(self, n: int) -> str:
        """Shard ``n``'s streams that hold audio, and how many bytes each was counted for."""
        return self.shard(n) + "fsb"

    # -- the whole cache ----------------------------------------------------------------

    def channel(self) -> str:
        """Pub/sub channel for invalidations (deletes, purges) across replicas."""
        return f"{self.prefix}:invalidate"

    def cleanup_lock(self) -> str:
        return f"{self.prefix}:cleanup:lock"

    def cleanup_history(self) -> str:
        return f"{self.prefix}:cleanup:history"

    def prefetch_job(self, job_id: str) -> str:
        return f"{self.prefix}:prefetch:job:{job_id}"

    def limit_window(self, who: str, budget: str, window: int) -> str:
        """One budget's counter for one window; ``who`` is its hash tag (one slot each)."""
        return f"{self.prefix}:limit:{{{who}}}:{budget}:{window}"

    def credential(self, digest: str) -> str:
        """Marks the credential with this keyed digest as accepted by the upstream."""
        return f"{self.prefix}:cred:{digest}"

    def key_secret(self) -> str:
        """The key secret the first replica made, when the operator configured none."""
        return f"{self.prefix}:key-secret"
