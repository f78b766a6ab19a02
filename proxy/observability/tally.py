"""Counter increments and histogram observations of the hit path, kept as plain numbers
until the next flush.

Each Prometheus update takes a lock, and a histogram's walks its buckets in Python: the
updates a hit made cost about 8% of a hot hit's throughput, its duration histogram 3% more
(bench/hit_path). The hit path adds to a tally instead, and the tally is flushed into the
real metrics before every scrape of this process and every
``audio_cache_stats_flush_seconds`` (so under ``serve --workers``, where any worker may
answer a scrape, the other workers' counts are at most that old).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Protocol


class Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Observable(Protocol):
    def observe(self, amount: float) -> None: ...


class _Observations:
    """Observations of one histogram (a labelled child), counted in its buckets."""

    __slots__ = ("bounds", "counts", "histogram", "total")

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram
        self.bounds: list[float] = list(histogram._upper_bounds)  # the last one is +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def hand_over(self) -> None:
        """Into the histogram's own bucket counters, as ``observe`` would have put them."""
        histogram = self.histogram
        for bucket, count in zip(histogram._buckets, self.counts, strict=True):
            if count:
                bucket.inc(count)
        histogram._sum.inc(self.total)


def _countable(histogram: Any) -> bool:
    """Whether ``histogram`` has the bucket counters a tally can hand counts to
    (prometheus_client's Histogram does; anything else is observed value by value)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    return (
        isinstance(bounds, list)
        and isinstance(buckets, list)
        and len(bounds) == len(buckets) > 0
        and bounds[-1] == float("inf")
        and hasattr(getattr(histogram, "_sum", None), "inc")
    )


class Tally:
    """Pending increments per counter and observations per histogram (labelled children,
    or metrics without labels)."""

    __slots__ = ("_observed", "_pending", "_values")

    def __init__(self) -> None:
        self._pending: dict[Incrementable, float] = {}
        self._observed: dict[Observable, _Observations] = {}
        self._values: dict[Observable, list[float]] = {}

    def add(self, counter: Incrementable, amount: float = 1) -> None:
        pending = self._pending
        pending[counter] = pending.get(counter, 0) + amount

    def observe(self, histogram: Observable, value: float) -> None:
        observed = self._observed.get(histogram)
        if observed is None:
            if not _countable(histogram):
                self._values.setdefault(histogram, []).append(value)
                return
            observed = self._observed[histogram] = _Observations(histogram)
        # Prometheus buckets are "less than or equal": the first bound >= value.
        observed.counts[bisect_left(observed.bounds, value)] += 1
        observed.total += value

    def flush(self) -> None:
        """Hand every pending increment and observation to its metric."""
        pending, self._pending = self._pending, {}
        for counter, amount in pending.items():
            counter.inc(amount)
        observed, self._observed = self._observed, {}
        for observations in observed.values():
            observations.hand_over()
        values, self._values = self._values, {}
        for histogram, amounts in values.items():
            for amount in amounts:
                histogram.observe(amount)


TALLY = Tally()
