"""The key secret: what makes isolated tenants' cache keys impossible to compute offline.

``AUDIO_CACHE_KEY_SECRET`` when the operator sets one; otherwise a random secret made once
and kept in the store, so that every replica sharing it derives the same keys.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger(__name__)


async def key_secret(configured: str | None, redis: Any, name: str) -> bytes:
    """The secret in force: the configured one, else the store's (made if absent)."""
    if configured:
        return configured.encode()
    try:
        await redis.set(name, secrets.token_hex(32), nx=True)  # the first replica's wins
        value = await redis.get(name)
    except RedisError as exc:
        log.warning(
            "no key secret (AUDIO_CACHE_KEY_SECRET unset, store unavailable: %s): isolated "
            "tenants' keys are computed without one until restart",
            exc,
        )
        return b""
    return bytes(value) if value is not None else b""
