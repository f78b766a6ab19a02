"""A circuit breaker for the cache store: a dead Redis must cost microseconds, not timeouts.

Pure state machine over a clock. Closed: every call goes through. After
``failure_threshold`` consecutive failures it opens: calls are refused at once (the request
path goes to the upstream). After ``reset_seconds`` one probe call is let through
(half-open); its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures; refuses calls while the store is presumed down."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self.opened_count = 0

    def allow(self) -> bool:
        """May a call go to the store now?"""
        if self.state is BreakerState.CLOSED:
            return True
        if (
            self.state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.reset_seconds
        ):
            self.state = BreakerState.HALF_OPEN  # this caller is the probe
            return True
        return False

    def success(self) -> None:
        self._failures = 0
        self.state = BreakerState.CLOSED

    def failure(self) -> None:
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            if self.state is not BreakerState.OPEN:
                self.opened_count += 1
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()

    @property
    def is_open(self) -> bool:
        return self.state is not BreakerState.CLOSED
