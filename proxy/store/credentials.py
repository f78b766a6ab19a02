"""Upstream credentials the upstream accepted lately, shared by replicas.

In ``client_auth: upstream`` a hit is served only to a credential the upstream accepted
within ``credential_verify_seconds``. The proxy keeps a keyed hash of each such credential
in Redis (never the credential), with that TTL; an upstream 401 or 403 forgets it at once.
Each replica also remembers a verdict for at most a second, so that a hot hit does not pay a
Redis round trip: another replica's 401 reaches this one within that second. When that
verdict runs out under load, the requests of one credential share one Redis check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .keyspace import Keyspace
from .limits import Guard, unguarded

_LOCAL_SECONDS = 1.0
_LOCAL_MAX = 10_000


class Credentials:
    """Which upstream credentials (by digest) the upstream accepted lately."""

    def __init__(
        self,
        redis: Any,
        prefix: str,
        verify_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        guard: Guard = unguarded,
    ) -> None:
        self.redis = redis
        self.guard = guard
        self.keyspace = Keyspace(prefix)
        self.verify_ms = int(verify_seconds * 1000)
        self.clock = clock
        self._local: dict[str, float] = {}
        self._checking: dict[str, asyncio.Future[bool]] = {}

    def key(self, digest: str) -> str:
        return self.keyspace.credential(digest)

    def verified_here(self, digest: str) -> bool:
        """True when this replica's own verdict (at most a second old) says verified."""
        until = self._local.get(digest)
        return until is not None and until > self.clock()

    async def verified(self, digest: str) -> bool:
        """Whether the upstream accepted this credential within the verify window."""
        if self.verified_here(digest):
            return True
        # Every in-flight request of a busy credential asks once its local verdict is over:
        # one check answers them all (one command, not one per request and a connection
        # from the pool for each).
        check = self._checking.get(digest)
        if check is None:
            check = self._checking[digest] = asyncio.ensure_future(self._check(digest))
            check.add_done_callback(lambda done: self._forget_check(digest, done))
        return await asyncio.shield(check)

    def _forget_check(self, digest: str, done: asyncio.Future[bool]) -> None:
        if self._checking.get(digest) is done:
            del self._checking[digest]
        if not done.cancelled():
            done.exception()  # retrieved here too: its waiters may all have gone

    async def _check(self, digest: str) -> bool:
        now = self.clock()
        if not await self.guard(self.redis.exists(self.key(digest))):
            self._local.pop(digest, None)
            return False
        if self._checking.get(digest) is asyncio.current_task():  # not refused meanwhile
            self._remember_locally(digest, now)
        return True

    async def accepted(self, digest: str) -> None:
        """The upstream answered this credential with success."""
        await self.guard(self.redis.set(self.key(digest), b"1", px=self.verify_ms))
        self._remember_locally(digest, self.clock())

    async def refused(self, digest: str) -> None:
        """The upstream refused this credential (401/403): forget it everywhere."""
        self._local.pop(digest, None)
        self._checking.pop(digest, None)  # a check in flight must not remember it
        await self.guard(self.redis.delete(self.key(digest)))

    def _remember_locally(self, digest: str, now: float) -> None:
        if len(self._local) >= _LOCAL_MAX:
            self._local.clear()
        self._local[digest] = now + min(_LOCAL_SECONDS, self.verify_ms / 1000)
