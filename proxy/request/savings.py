"""What answering without an upstream call saved: characters and their price, per route."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.pricing import cost_of, price_per_million
from ..observability.metrics import METRICS
from ..observability.tally import TALLY

_MAX_REMEMBERED = 1024


@dataclass(frozen=True, slots=True)
class RouteMetrics:
    """What a request answered without an upstream call updates, for one route and voice."""

    hit_duration: Any
    characters: Any
    cost: Any
    price: float  # per million characters

    def saved(self, characters: int) -> None:
        """This request's characters (and their price) were not sent upstream."""
        TALLY.add(self.characters, characters)
        if self.price:
            TALLY.add(self.cost, cost_of(characters, self.price))


class Savings:
    """The labelled metrics of each route and voice and their price, looked up once
    (``labels()`` takes a lock and a dict lookup each time)."""

    def __init__(self, prices: Mapping[str, float]) -> None:
        self._prices = prices
        self._known: dict[str, RouteMetrics] = {}

    def of(self, route: str, voice: str) -> RouteMetrics:
        name = f"{route}:{voice}"
        found = self._known.get(name)
        if found is None:
            found = RouteMetrics(
                hit_duration=METRICS.requests.labels(route, "hit"),
                characters=METRICS.characters_saved.labels(route),
                cost=METRICS.cost_saved.labels(route),
                price=price_per_million(self._prices, route, voice),
            )
            if len(self._known) < _MAX_REMEMBERED:
                self._known[name] = found
        return found
