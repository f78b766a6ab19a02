"""Usage limits shared by replicas: requests per minute and upstream characters per day.

Each budget is a fixed window (the minute, the UTC day) counted in one Redis key that
expires when its window ends; taking from it is one atomic script, so replicas never
together let more through than the limit.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

from .keyspace import Keyspace

_TAKE = resources.files(__package__).joinpath("scripts/limit_take.lua").read_text()

# Runs one store call: the cache service's circuit breaker (``StoreGuard``), so that a
# store known to be down costs no timeout; raises a RedisError while it is open.
Guard = Callable[[Awaitable[Any]], Awaitable[Any]]


async def unguarded(call: Awaitable[Any]) -> Any:
    """A store call awaited as it is."""
    return await call


class Budget(StrEnum):
    """What a limit counts, and over which window."""

    REQUESTS_PER_MINUTE = "rpm"
    UPSTREAM_CHARACTERS_PER_DAY = "cpd"

    @property
    def window_ms(self) -> int:
        return 60_000 if self is Budget.REQUESTS_PER_MINUTE else 86_400_000


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a request fits its budget, and when the budget renews."""

    allowed: bool
    used: int
    limit: int
    retry_after_seconds: int


class Limits:
    """Fixed-window budgets per client or tenant, kept in Redis."""

    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        clock: Callable[[], float] = time.time,
        guard: Guard = unguarded,
    ) -> None:
        self.redis = redis
        self.guard = guard
        self.keyspace = Keyspace(prefix)
        self.clock = clock
        self._take = redis.register_script(_TAKE)

    def _window(self, budget: Budget) -> tuple[int, int]:
        """(window number, when it ends in unix ms)."""
        now_ms = int(self.clock() * 1000)
        number = now_ms // budget.window_ms
        return number, (number + 1) * budget.window_ms

    def key(self, who: str, budget: Budget, window: int) -> str:
        return self.keyspace.limit_window(who, budget, window)

    async def take(self, who: str, budget: Budget, amount: int, limit: int) -> Verdict:
        """Take ``amount`` from ``who``'s budget if it fits."""
        window, ends_ms = self._window(budget)
        taken, used = await self.guard(
            self._take(keys=[self.key(who, budget, window)], args=[amount, limit, ends_ms])
        )
        retry = max(1, -(-(ends_ms - int(self.clock() * 1000)) // 1000))
        return Verdict(bool(taken), int(used), limit, retry)

    async def give_back(self, who: str, budget: Budget, amount: int) -> None:
        """Return what was taken for work that did not happen (e.g. a coalesced miss)."""
        window, ends_ms = self._window(budget)
        key = self.key(who, budget, window)
        # The window may have turned since the take: the counter this creates expires too.
        pipe = self.redis.pipeline(transaction=False)  # one key: one slot, one connection
        pipe.decrby(key, amount)
        pipe.pexpireat(key, ends_ms)
        await self.guard(pipe.execute())

    async def used(self, who: str, budget: Budget) -> int:
        """How much of the current window's budget ``who`` has used."""
        window, _ = self._window(budget)
        value = await self.guard(self.redis.get(self.key(who, budget, window)))
        return int(value or 0)
