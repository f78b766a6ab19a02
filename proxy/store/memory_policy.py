"""Which Redis ``maxmemory-policy`` the cache can live with, and noticing evictions.

Every entry key has a TTL; the bookkeeping keys (stats, index, expiry and selector sets, the
key secret, cleanup history) have none. Under ``noeviction`` or a ``volatile-*`` policy Redis
therefore only ever evicts entries (and other keys that expire anyway: fill locks and
streams, verified credentials, limit windows), never the records that say what is stored.
An evicted entry is a miss at once; its index record becomes a "ghost", and the counters
still count it until :class:`EvictionWatch` sees Redis's ``evicted_keys`` grow and runs
``repair()``, which drops the ghosts and recomputes the counters.

Under ``allkeys-*`` Redis may evict the stats, the index and the selector sets themselves:
totals drift without bound, and entries whose index record is gone are missed by a purge by
selector (a lost selector set alone is not: purges also match the index records).
The proxy refuses to start on such a policy unless ``redis_allow_allkeys_eviction`` is set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from ..config.settings import ConfigError

log = logging.getLogger(__name__)

ALLOWED_POLICIES = (
    "noeviction",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)


class EvictionPolicyError(ConfigError):
    """Redis may evict the cache's bookkeeping; the message names the fix."""


def _policies(reply: Any) -> set[str]:
    """Every ``maxmemory-policy`` in a CONFIG GET reply: one node's, or a cluster's
    (a mapping per node)."""
    found: set[str] = set()
    if not isinstance(reply, dict):
        return found
    for name, value in reply.items():
        if isinstance(value, dict):
            found |= _policies(value)
        elif (name.decode() if isinstance(name, bytes) else str(name)) == "maxmemory-policy":
            found.add(value.decode() if isinstance(value, bytes) else str(value))
    return found


async def check_policy(redis: Any, *, allow_allkeys: bool) -> str | None:
    """Read ``maxmemory-policy`` (every master's, on a cluster) and refuse an ``allkeys-*``
    one unless ``allow_allkeys``; the policy found, or None when it could not be read
    (CONFIG renamed or denied on a managed Redis, or Redis not reachable yet)."""
    try:
        reply = await redis.config_get("maxmemory-policy")
    except (RedisError, OSError) as exc:
        log.warning(
            "could not check Redis maxmemory-policy (%s); make sure it is noeviction or "
            "volatile-*: under allkeys-* Redis may evict the cache's bookkeeping",
            exc,
        )
        return None
    policies = _policies(reply)
    if not policies:
        log.warning("could not check Redis maxmemory-policy: CONFIG GET returned nothing")
        return None
    bad = sorted(p for p in policies if p not in ALLOWED_POLICIES)
    if bad:
        message = (
            f"Redis maxmemory-policy is {', '.join(bad)}: Redis may then evict the cache's "
            "stats, index and selector sets, so totals drift and purges miss entries. "
            "Set maxmemory-policy to volatile-lru (or noeviction, or another volatile-*), "
            "or set redis_allow_allkeys_eviction: true to run anyway"
        )
        if not allow_allkeys:
            raise EvictionPolicyError(message)
        log.warning("%s (allowed by redis_allow_allkeys_eviction)", message)
    return sorted(policies)[0]


def _evicted_keys(reply: Any) -> int:
    """``evicted_keys`` of an INFO stats reply, summed over a cluster's nodes."""
    if not isinstance(reply, dict):
        return 0
    if "evicted_keys" in reply:
        return int(reply["evicted_keys"])
    return sum(_evicted_keys(v) for v in reply.values() if isinstance(v, dict))


class EvictionWatch:
    """Runs ``repair`` when Redis has evicted keys since it last looked.

    ``check`` is cheap (one INFO stats at most every ``every_seconds``). A repair reads
    every index record, so while Redis keeps evicting they are spaced at least
    ``min_repair_seconds`` apart, and at least ten times as long as the last one took."""

    def __init__(
        self,
        redis: Any,
        repair: Callable[[], Awaitable[Any]],
        *,
        guard: Callable[[Awaitable[Any]], Awaitable[Any]] | None = None,
        every_seconds: float = 1.0,
        min_repair_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.repair = repair
        self.guard = guard
        self.every_seconds = every_seconds
        self.min_repair_seconds = min_repair_seconds
        self.clock = clock
        self._seen: int | None = None
        self._checked = float("-inf")
        self._next_repair = float("-inf")
        # Evictions seen but not yet repaired (a repair was due later).
        self._owed = False
        self.repairs = 0

    async def check(self) -> bool:
        """True when it ran a repair."""
        now = self.clock()
        if now - self._checked < self.every_seconds:
            return False
        self._checked = now
        try:
            call = self.redis.info("stats")
            # Through the breaker: with the store down or hung this costs nothing.
            evicted = _evicted_keys(await (self.guard(call) if self.guard else call))
        except (RedisError, OSError):
            return False
        # At the first look any eviction since Redis started may have hit this cache;
        # a drop means Redis restarted, and its keys may be gone too.
        if self._seen is None or evicted != self._seen:
            self._owed = self._owed or evicted > 0 or self._seen is not None
        self._seen = evicted
        if not self._owed or now < self._next_repair:
            return False
        started = self.clock()
        await self.repair()
        took = self.clock() - started
        self._owed = False
        self._next_repair = self.clock() + max(self.min_repair_seconds, 10 * took)
        self.repairs += 1
        return True
