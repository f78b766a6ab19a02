"""The circuit breaker's state machine, on a hand-driven clock."""

from __future__ import annotations

from proxy.core.breaker import BreakerState, CircuitBreaker
from tests.support.clock import FakeClock


def test_opens_after_consecutive_failures_and_refuses_calls() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=3, reset_seconds=2, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state is BreakerState.CLOSED
    b.failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    assert b.opened_count == 1


def test_a_success_resets_the_failure_count() -> None:
    b = CircuitBreaker(failure_threshold=2, clock=FakeClock())
    b.failure()
    b.success()
    b.failure()
    assert b.state is BreakerState.CLOSED


def test_half_open_lets_one_probe_through() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, reset_seconds=2, clock=clock)
    b.failure()
    clock.now += 1.9
    assert not b.allow()
    clock.now += 0.2
    assert b.allow()  # the probe
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allow()  # only one probe at a time
    b.failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    clock.now += 2.1
    assert b.allow()
    b.success()
    assert b.state is BreakerState.CLOSED
    assert b.allow()
    assert b.opened_count == 2
