"""What a synthesis would have cost: a price per million characters by route and voice.

Prices come from ``cost_per_million_characters``, a mapping whose keys are, from the most
to the least specific, ``"<route>:<voice>"``, ``"<route>"`` and ``"default"``. Providers
bill by characters of input text, so a hit saves exactly the price of its text.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT = "default"


def price_per_million(prices: Mapping[str, float], route: str, voice: str) -> float:
    """The price that applies to ``route`` and ``voice``; 0 when none is configured."""
    for name in (f"{route}:{voice}", route, DEFAULT):
        price = prices.get(name)
        if price is not None:
            return price
    return 0.0


def cost_of(characters: int, price: float) -> float:
    """Cost of synthesizing ``characters`` at ``price`` per million characters."""
    return characters * price / 1_000_000
