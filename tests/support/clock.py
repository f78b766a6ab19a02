"""A clock the test moves by hand, for logic that takes a ``clock`` callable."""

from __future__ import annotations


class FakeClock:
    """Monotonic seconds that change only when the test sets ``now``."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
