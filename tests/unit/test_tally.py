"""The hit path's tally hands Prometheus exactly what direct updates would have."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.observability.tally import Tally

BUCKETS = (0.001, 0.005, 0.01, 0.1, 1.0)
# On a bound, above every bound, zero, and in between.
DURATIONS = [0.0, 0.0005, 0.001, 0.001, 0.0049, 0.005, 0.05, 0.1, 0.7, 1.0, 3.5, 12.0]


def metrics(registry: CollectorRegistry) -> tuple[Any, Any]:
    requests = Histogram("t_requests", "d", ["route", "result"], buckets=BUCKETS, registry=registry)
    saved = Counter("t_saved", "d", ["route"], registry=registry)
    return requests, saved


def exposition(registry: CollectorRegistry) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if "_created" not in line]


def test_a_flushed_tally_equals_direct_updates() -> None:
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    d_requests, d_saved = metrics(direct)
    t_requests, t_saved = metrics(tallied)
    tally = Tally()
    for i, seconds in enumerate(DURATIONS):
        route = "openai" if i % 3 else "marytts"
        d_requests.labels(route, "hit").observe(seconds)
        d_saved.labels(route).inc(len(route))
        tally.observe(t_requests.labels(route, "hit"), seconds)
        tally.add(t_saved.labels(route), len(route))
    assert exposition(tallied) != exposition(direct)  # nothing reaches Prometheus early
    tally.flush()
    assert exposition(tallied) == exposition(direct)
    tally.flush()  # a second flush adds nothing
    assert exposition(tallied) == exposition(direct)


class Recorder:
    """Something observable that is not a prometheus_client Histogram."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def observe(self, amount: float) -> None:
        self.seen.append(amount)


def test_other_histograms_are_observed_value_by_value() -> None:
    tally = Tally()
    recorder = Recorder()
    for seconds in DURATIONS:
        tally.observe(recorder, seconds)
    assert recorder.seen == []
    tally.flush()
    assert recorder.seen == DURATIONS
