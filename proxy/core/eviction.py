"""Which entries cleanup removes first: the design document's multi-factor score, as pure functions.

    score = (age_weight * age + frequency_weight * rarity) * content_type_factor

``age`` and ``rarity`` are in [0, 1], relative to the entries being ranked:

- ``age`` = the entry's age / the largest age, counted since the last hit
  (``age_basis="last_access"``, the default: it wins on every cache size of
  bench/hit_ratio.py) or since creation (``"created"``, the design document read literally).
- ``rarity`` = 1 - log1p(hits) / log1p(most hits): less used goes first. The log keeps one
  very popular phrase from flattening every other entry's frequency to zero.
- ``content_type_factor`` (1.0 unless configured) protects classes such as welcome_message.

Higher scores go first; equal scores go larger first (the design document's tie-breaker),
then by key so the order is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

AGE_BASES = ("created", "last_access")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One cached entry as cleanup sees it."""

    key: str
    size: int
    created_ms: int
    last_access_ms: int
    hits: int
    content_class: str = "default"
    tenant: str = ""
    shard: int = 0

    def since_ms(self, basis: str) -> int:
        """When the entry's age starts counting, per ``basis``."""
        if basis == "last_access":
            return max(self.last_access_ms, self.created_ms)
        return self.created_ms


@dataclass(frozen=True)
class ScoreWeights:
    """The knobs of the score (defaults are the design document's)."""

    age: float = 0.7
    frequency: float = 0.3
    content_type_factors: Mapping[str, float] = field(default_factory=dict)
    default_factor: float = 1.0
    age_basis: str = "last_access"

    def __post_init__(self) -> None:
        if self.age_basis not in AGE_BASES:
            raise ValueError(f"age_basis must be one of {AGE_BASES}, got {self.age_basis!r}")

    @classmethod
    def from_settings(cls, settings: Any) -> ScoreWeights:
        """The weights configured in ``Settings`` (``audio_cache_cleanup_*``)."""
        return cls(
            age=settings.audio_cache_cleanup_age_weight,
            frequency=settings.audio_cache_cleanup_frequency_weight,
            content_type_factors=dict(settings.audio_cache_cleanup_content_type_factors),
            age_basis=settings.audio_cache_cleanup_age_basis,
        )

    def factor(self, content_class: str) -> float:
        return self.content_type_factors.get(content_class, self.default_factor)


@dataclass(frozen=True, slots=True)
class Scale:
    """What ages and hit counts are normalized against: the ranked entries' extremes."""

    now_ms: int
    oldest_age_ms: int
    most_hits: int

    @classmethod
    def of(cls, candidates: Iterable[Candidate], now_ms: int, basis: str) -> Scale:
        oldest = most = 0
        for c in candidates:
            oldest = max(oldest, now_ms - c.since_ms(basis))
            most = max(most, c.hits)
        return cls(now_ms, oldest, most)

    def widen(self, other: Scale) -> Scale:
        """The scale over both sets of entries (for ranking gathered in parts)."""
        return Scale(
            self.now_ms,
            max(self.oldest_age_ms, other.oldest_age_ms),
            max(self.most_hits, other.most_hits),
        )


def score(c: Candidate, scale: Scale, weights: ScoreWeights) -> float:
    """How strongly ``c`` should be evicted, in [0, 1] for factors in [0, 1]."""
    age_ms = max(0, scale.now_ms - c.since_ms(weights.age_basis))
    age = age_ms / scale.oldest_age_ms if scale.oldest_age_ms > 0 else 0.0
    if scale.most_hits > 0:
        rarity = 1.0 - math.log1p(max(c.hits, 0)) / math.log1p(scale.most_hits)
    else:
        rarity = 1.0
    return (weights.age * min(age, 1.0) + weights.frequency * rarity) * weights.factor(
        c.content_class
    )


def sort_key(c: Candidate, scale: Scale, weights: ScoreWeights) -> tuple[float, int, str]:
    """Ascending order of this key is eviction order: high score, then large, first."""
    return (-score(c, scale, weights), -c.size, c.key)


def eviction_order(
    candidates: Sequence[Candidate], weights: ScoreWeights, now_ms: int
) -> list[Candidate]:
    """Every candidate, the first to evict first."""
    scale = Scale.of(candidates, now_ms, weights.age_basis)
    return sorted(candidates, key=lambda c: sort_key(c, scale, weights))


def take_until(ordered: Iterable[Candidate], need_bytes: int) -> list[Candidate]:
    """The shortest prefix of ``ordered`` whose sizes add up to ``need_bytes``."""
    victims: list[Candidate] = []
    freed = 0
    if need_bytes <= 0:
        return victims
    for c in ordered:
        victims.append(c)
        freed += c.size
        if freed >= need_bytes:
            break
    return victims


def select_victims(
    candidates: Sequence[Candidate], need_bytes: int, weights: ScoreWeights, now_ms: int
) -> list[Candidate]:
    """The entries to remove to free at least ``need_bytes``, in eviction order."""
    if need_bytes <= 0:
        return []
    return take_until(eviction_order(candidates, weights, now_ms), need_bytes)


def percent_of(max_bytes: int, percent: float) -> int:
    return int(max_bytes * percent / 100)


def needs_cleanup(current_bytes: int, max_bytes: int, threshold_percent: float) -> bool:
    """True once the stored bytes reach the threshold (the design document's 95%)."""
    return current_bytes >= percent_of(max_bytes, threshold_percent)


def bytes_to_free(current_bytes: int, target_bytes: int) -> int:
    """How much must go to get down to ``target_bytes`` (the design document's 80%)."""
    return max(0, current_bytes - target_bytes)
