"""The circuit breaker around every call the cache service makes to its store.

While the breaker is open a call is refused at once with :class:`CacheUnavailable`: the
request path fails open to the upstream, admin routes answer 503, background jobs log
and try again later. Errors that mean the store is down or unreachable count as
failures; any other Redis error means the server answered, so it counts as a success.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import TypeVar

from redis import exceptions as redis_errors
from redis.exceptions import RedisError

from ..core.breaker import CircuitBreaker
from ..observability.metrics import METRICS

T = TypeVar("T")

# Errors that mean the store is down or unreachable (others mean a command failed).
# CLUSTERDOWN (and MASTERDOWN) come from a server that answered, but mean it cannot serve
# until a failover ends; counted as answers, they kept the breaker closed, so every request
# paid redis-py's retries on them (0.25 s each, about 1 s a request) for the whole gap.
STORE_DOWN = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ClusterDownError,
)


class CacheUnavailable(RedisError):
    """The store is presumed down; the request path fails open to the upstream."""


class StoreGuard:
    """Runs store calls through one circuit breaker."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker

    async def __call__(self, call: Awaitable[T]) -> T:
        """Await ``call`` (one round trip to the store), or refuse it while the store is
        presumed down."""
        breaker = self.breaker
        if not breaker.allow():
            if inspect.iscoroutine(call):
                call.close()
            raise CacheUnavailable("the cache store is unavailable (circuit open)")
        was_open = breaker.is_open  # allowed while not closed: this call is the probe
        try:
            result = await call
        except (RedisError, OSError) as exc:
            if isinstance(exc, RedisError) and not isinstance(exc, STORE_DOWN):
                breaker.success()  # the server answered: it is up, the command failed
            else:
                breaker.failure()
            raise
        except BaseException:
            if was_open:
                # A probe that did not finish (cancelled, say) proves nothing; without this
                # the breaker would stay half-open, refusing every call, for good.
                breaker.failure()
            raise
        else:
            breaker.success()
            return result
        finally:
            if breaker.is_open != was_open:
                METRICS.redis_circuit_open.set(1 if breaker.is_open else 0)
