"""Upstream credentials the upstream accepted lately, shared by replicas.

In ``client_auth: upstream`` a hit is served only to a credential the upstream accepted
within ``credential_verify_seconds``. The proxy keeps a keyed hash of each such credential
in Redis (never the credential), with that TTL; an upstream 401 or 403 forgets it at once.
Each replica also remembers a verdict for at most a second, so that a hot hit does not pay a
Redis round trip: another replica's 401 reaches this one within that second.
"""

from __future__ import annotations

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

    def key(self, digest: str) -> str:
        return self.keyspace.credential(digest)

    def verified_here(self, digest: str) -> bool:
        """True when this replica's own verdict (at most a second old) says verified."""
        until = self._local.get(digest)
        return until is not None and until > self.clock()

    async def verified(self, digest: str) -> bool:
        """Whether the upstream accepted this credential within the verify window."""
        now = self.clock()
        if self.verified_here(digest):
            return True
        if not await self.guard(self.redis.exists(self.key(digest))):
            self._local.pop(digest, None)
            return False
        self._remember_locally(digest, now)
        return True

    async def accepted(self, digest: str) -> None:
        """The upstream answered this credential with success."""
        await self.guard(self.redis.set(self.key(digest), b"1", px=self.verify_ms))
        self._remember_locally(digest, self.clock())

    async def refused(self, digest: str) -> None:
        """The upstream refused this credential (401/403): forget it everywhere."""
        self._local.pop(digest, None)
        await self.guard(self.redis.delete(self.key(digest)))

    def _remember_locally(self, digest: str, now: float) -> None:
        if len(self._local) >= _LOCAL_MAX:
            self._local.clear()
        self._local[digest] = now + min(_LOCAL_SECONDS, self.verify_ms / 1000)
