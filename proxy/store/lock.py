"""A Redis lock with an expiry and an owner's token: one cleaner at a time, one leader per
cross-replica fill.

Taken with ``SET NX PX``, so a holder that crashes blocks the others only until it
expires. Released and renewed by compare-and-delete / compare-and-extend scripts: a lock
that expired and was taken by another owner is never released or renewed by the one
before. The token also fences writes made under the lock (see ``scripts/flight_*.lua``).
"""

from __future__ import annotations

import secrets
import weakref
from typing import Any

from .lua import Lua

# Each client's two scripts, made once: a fill's lead makes a lock per miss, and making
# the scripts (hashing their text) was most of a lock's cost on the request path.
_SCRIPTS: weakref.WeakKeyDictionary[Any, tuple[Lua, Lua]] = weakref.WeakKeyDictionary()


class TokenLock:
    """The lock ``name`` held for ``ttl_ms`` at a time, by whoever knows ``token``."""

    def __init__(self, redis: Any, name: str, ttl_ms: int, *, token: str | None = None) -> None:
        self.redis = redis
        self.name = name
        self.ttl_ms = ttl_ms
        self.token = token or secrets.token_hex(16)
        self._release, self._extend = _scripts(redis)

    async def acquire(self) -> bool:
        """Take the lock if nobody holds it."""
        return bool(await self.redis.set(self.name, self.token, nx=True, px=self.ttl_ms))

    async def extend(self) -> bool:
        """Renew the expiry; False means the lock was lost (expired, perhaps taken)."""
        return bool(await self._extend(keys=[self.name], args=[self.token, self.ttl_ms]))

    async def release(self) -> bool:
        """Let go, if still the owner; True if released."""
        return bool(await self._release(keys=[self.name], args=[self.token]))


def _scripts(redis: Any) -> tuple[Lua, Lua]:
    try:
        scripts = _SCRIPTS.get(redis)
    except TypeError:  # a client that cannot be weakly referenced: made each time
        return Lua(redis, "lock_release"), Lua(redis, "lock_extend")
    if scripts is None:
        scripts = (Lua(redis, "lock_release"), Lua(redis, "lock_extend"))
        _SCRIPTS[redis] = scripts
    return scripts
