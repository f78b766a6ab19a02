"""Counter increments of the hit path, kept as plain numbers until the next flush.

Each Prometheus update takes a lock; the five a hit made cost about 8% of a hot hit's
throughput (bench/hit_path). The hit path adds to a tally instead, and the tally is flushed
into the real counters before every scrape of this process and every
``audio_cache_stats_flush_seconds`` (so under ``serve --workers``, where any worker may
answer a scrape, the other workers' counts are at most that old).
"""

from __future__ import annotations

from typing import Protocol


class Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Tally:
    """Pending increments per counter (a labelled child, or a counter without labels)."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[Incrementable, float] = {}

    def add(self, counter: Incrementable, amount: float = 1) -> None:
        pending = self._pending
        pending[counter] = pending.get(counter, 0) + amount

    def flush(self) -> None:
        """Hand every pending increment to its counter."""
        pending, self._pending = self._pending, {}
        for counter, amount in pending.items():
            counter.inc(amount)


TALLY = Tally()
