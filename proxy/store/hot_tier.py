"""The hot tier: decoded audio of the most requested entries, in this process's memory.

A hit here costs no Redis round trip and no decompression. Pure logic over a clock; the
store consults it and :mod:`proxy.store.invalidation` keeps it honest.

- **Bounded in bytes**: the audio plus a fixed overhead per entry never exceeds
  ``max_bytes``; an entry larger than an eighth of the tier is never admitted.
- **Admission** (TinyLFU in spirit, with exact counters over a bounded window): every
  lookup that the tier cannot answer is a *sighting*, remembered in a bounded ghost table.
  An entry is admitted from its second sighting on, and only if it has been asked for more
  often than the least recently used residents it would push out. A scan of one-off texts
  only churns the ghost table; hot entries stay. Counters are halved every ``10 x`` the
  table size of events, so yesterday's favourites do not stay forever.
- **Correctness**: the tier serves only while it is *live*, i.e. while the invalidation
  channel has been heard from recently (:meth:`heard`); every delete, purge, clear or
  overwrite on any replica arrives as :meth:`invalidate`; an entry past its expiry is
  never served. ``generation`` changes on every invalidation, so a read from Redis that
  raced with one is not admitted (:meth:`offer` takes the generation seen before the read).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Generic, Protocol, TypeVar

# Per-entry bookkeeping (key, dicts, header tuples, the prepared hit headers) counted
# against the byte bound.
ENTRY_OVERHEAD = 2048
GHOST_MIN, GHOST_MAX = 1024, 65536


class Expiring(Protocol):
    """What the tier needs of a cached answer."""

    @property
    def expires_ms(self) -> int: ...

    @property
    def audio(self) -> bytes: ...


E = TypeVar("E", bound=Expiring)


class _Resident(Generic[E]):
    __slots__ = ("entry", "hits", "size")

    def __init__(self, entry: E, size: int, hits: int) -> None:
        self.entry = entry
        self.size = size
        self.hits = hits


@dataclass
class HotTierStats:
    """Lifetime event counts, for metrics and tests."""

    hits: int = 0
    admitted: int = 0
    rejected: int = 0
    evicted: int = 0
    invalidated: int = 0
    expired: int = 0
    cleared: int = 0


class HotTier(Generic[E]):
    """An in-process, byte-bounded, frequency-admitted cache of decoded entries."""

    def __init__(
        self,
        max_bytes: int,
        *,
        live_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_bytes // 8
        self.live_seconds = live_seconds
        self._clock = clock
        self._residents: OrderedDict[str, _Resident[E]] = OrderedDict()
        self._ghosts: OrderedDict[str, int] = OrderedDict()
        self.ghost_limit = min(GHOST_MAX, max(GHOST_MIN, max_bytes // 4096))
        self.bytes = 0
        self.generation = 0
        self._live_until = 0.0
        self._events = 0
        self._age_every = 10 * self.ghost_limit
        self.stats = HotTierStats()
        self._reported = HotTierStats()

    # -- liveness -------------------------------------------------------------------

    def heard(self) -> None:
        """The invalidation channel is up and was heard from just now."""
        self._live_until = self._clock() + self.live_seconds

    @property
    def live(self) -> bool:
        """May the tier be used? Only while invalidations are known to reach it."""
        return self._clock() < self._live_until

    def suspend(self) -> None:
        """The invalidation channel is down: forget everything, serve nothing."""
        self._live_until = 0.0
        self.clear()

    # -- lookups --------------------------------------------------------------------

    def get(self, key: str, now_ms: int) -> E | None:
        """The entry for ``key`` if resident and unexpired. A miss counts as a sighting."""
        resident = self._residents.get(key)
        if resident is None:
            self._sighted(key)
            return None
        if resident.entry.expires_ms <= now_ms:
            self._drop(key)
            self.stats.expired += 1
            self._sighted(key)
            return None
        resident.hits += 1
        self._residents.move_to_end(key)
        self.stats.hits += 1
        self._tick()
        return resident.entry

    def offer(self, key: str, entry: E, generation: int, now_ms: int) -> bool:
        """Consider ``entry`` (just read from the store) for admission; True if admitted."""
        if generation != self.generation or not self.live or entry.expires_ms <= now_ms:
            return False
        if key in self._residents:
            return False
        wanted = self._ghosts.get(key, 0)
        size = len(entry.audio) + ENTRY_OVERHEAD
        if wanted < 2 or size > self.max_entry_bytes:
            return False
        victims: list[str] = []
        free = self.max_bytes - self.bytes
        for victim, resident in self._residents.items():  # least recently used first
            if free >= size:
                break
            if resident.hits >= wanted:
                self.stats.rejected += 1
                return False
            victims.append(victim)
            free += resident.size
        for victim in victims:
            hits = self._residents[victim].hits
            self._drop(victim)
            self._remember(victim, hits)
            self.stats.evicted += 1
        self._ghosts.pop(key, None)
        self._residents[key] = _Resident(entry, size, wanted)
        self.bytes += size
        self.stats.admitted += 1
        return True

    # -- invalidation ---------------------------------------------------------------

    def invalidate(self, keys: Iterable[str]) -> int:
        """Forget ``keys`` (deleted or overwritten somewhere); returns how many were here."""
        self.generation += 1
        dropped = 0
        for key in keys:
            resident = self._residents.get(key)
            if resident is not None:
                self._drop(key)
                # The text is as popular as before: its next read from the store is admitted.
                self._remember(key, resident.hits)
                dropped += 1
        self.stats.invalidated += dropped
        return dropped

    def clear(self) -> None:
        """Forget every entry (the whole cache was cleared, or invalidations were missed)."""
        self.generation += 1
        if self._residents:
            self.stats.cleared += 1
        self._residents.clear()
        self.bytes = 0

    # -- introspection --------------------------------------------------------------

    def unreported(self) -> dict[str, int]:
        """Events since the last call (for counters kept elsewhere, e.g. Prometheus)."""
        now, before = asdict(self.stats), asdict(self._reported)
        self._reported = HotTierStats(**now)
        return {name: now[name] - before[name] for name in now if now[name] != before[name]}

    def __len__(self) -> int:
        return len(self._residents)

    def __contains__(self, key: object) -> bool:
        return key in self._residents

    # -- internals ------------------------------------------------------------------

    def _drop(self, key: str) -> None:
        resident = self._residents.pop(key)
        self.bytes -= resident.size

    def _sighted(self, key: str) -> None:
        self._remember(key, self._ghosts.get(key, 0) + 1)
        self._tick()

    def _remember(self, key: str, count: int) -> None:
        ghosts = self._ghosts
        ghosts[key] = count
        ghosts.move_to_end(key)
        if len(ghosts) > self.ghost_limit:
            ghosts.popitem(last=False)

    def _tick(self) -> None:
        self._events += 1
        if self._events >= self._age_every:
            self._events = 0
            for resident in self._residents.values():
                resident.hits //= 2
            for key in self._ghosts:
                self._ghosts[key] //= 2
