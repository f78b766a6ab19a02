"""Invalidations across replicas: every replica's hot tier hears every delete within a second.

The store's Lua scripts PUBLISH on ``<prefix>:invalidate`` in the same atomic step that
removes or overwrites entries (so no caller can forget to): the message is the removed
keys, space-separated, or ``*`` for "everything". Plain PUBLISH reaches the subscribers of
every node of a Redis Cluster, so one subscription to any node is enough.

The listener pings the channel every ``ping_seconds``; every answer, message or
confirmation keeps the hot tier live for ``HotTier.live_seconds``. When the subscription
breaks (Redis restarted, network cut, server silent) the tier stops serving at once or at
the latest when that second runs out, and is emptied: invalidations may have been missed.
It is filled again only after the subscription is confirmed anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..observability.metrics import METRICS
from .hot_tier import HotTier

log = logging.getLogger(__name__)

EVERYTHING = "*"


def parse_message(data: bytes | str) -> list[str] | None:
    """The keys an invalidation names, or None for "everything"."""
    text = data.decode() if isinstance(data, bytes) else data
    if text.strip() == EVERYTHING:
        return None
    return text.split()


class InvalidationListener:
    """Subscribes to the invalidation channel and applies it to a hot tier, reconnecting
    with backoff until stopped."""

    def __init__(
        self,
        open_client: Callable[[int], Any],
        channel: str,
        hot: HotTier[Any],
        *,
        ping_seconds: float = 0.25,
        max_backoff_seconds: float = 1.0,
    ) -> None:
        self.open_client = open_client
        self.channel = channel
        self.hot = hot
        self.ping_seconds = ping_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.connects = 0
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled."""
        attempt = 0
        while True:
            client = self.open_client(attempt)
            try:
                await self._listen(client)
            except (RedisError, OSError) as exc:
                log.warning("hot tier suspended: invalidation channel lost (%s)", exc)
            finally:
                self._suspend()
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await client.aclose()
            attempt += 1
            await asyncio.sleep(min(self.max_backoff_seconds, 0.05 * 2 ** min(attempt, 5)))

    async def _listen(self, client: Any) -> None:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            loop = asyncio.get_running_loop()
            next_ping = 0.0
            while True:
                if self.subscribed.is_set() and not self.hot.live:
                    # Silent past the bound: treat it as lost, so the tier starts empty.
                    raise RedisConnectionError("the invalidation channel went silent")
                now = loop.time()
                if now >= next_ping:
                    await pubsub.ping()
                    next_ping = now + self.ping_seconds
                message = await pubsub.get_message(timeout=self.ping_seconds)
                if message is not None:
                    self._apply(message)
        finally:
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                await pubsub.aclose()

    def _apply(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            # Whatever happened while we were not listening is unknown: start empty.
            self.hot.clear()
            self.connects += 1
            self.subscribed.set()
            log.info("hot tier live: subscribed to %s", self.channel)
        elif kind == "message":
            keys = parse_message(message["data"])
            if keys is None:
                self.hot.clear()
            else:
                self.hot.invalidate(keys)
        if self.subscribed.is_set():
            self.hot.heard()
        METRICS.hot_tier_live.set(1 if self.hot.live else 0)

    def _suspend(self) -> None:
        self.subscribed.clear()
        self.hot.suspend()
        METRICS.hot_tier_live.set(0)
