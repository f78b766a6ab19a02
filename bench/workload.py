"""A synthetic hotel voice-agent workload for cache replays (deterministic for a seed).

Assumptions, each a knob below:

- Fixed phrases: per content type of the design document's table, a pool of a few dozen to a few
  hundred phrases with Zipf-like popularity (rank r is asked with weight 1/r^s). Welcome
  messages and errors are few and very popular; common answers many.
- Daily churn: each day a fraction of each pool is rewritten (new offers, prices, events):
  the phrase at that popularity rank becomes a new text (a new cache key).
- Templated answers (availability): most fill dates, room numbers and prices into a template,
  so they rarely repeat; some are "today" answers ("we have rooms tonight from 129 euros")
  asked many times within one day and never again.
- Sizes: 22050 Hz 16-bit mono WAV (44,100 bytes per second of speech, espeak-ng's default
  output) at ~14.5 characters per second (espeak-ng's default 175 words per minute), plus a
  44-byte header; text lengths are uniform within a per-type range. ``SIZE_SCALE`` divides
  every size so a replay against a real Valkey stays small; ratios do not change.
- Arrivals: ``requests_per_day`` per simulated day at uniformly random times.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass

BYTES_PER_SECOND = 44_100
CHARS_PER_SECOND = 14.5
SIZE_SCALE = 64


@dataclass(frozen=True, slots=True)
class Request:
    """One TTS request of the trace."""

    t_ms: int
    key: str
    size: int
    content_class: str


@dataclass(frozen=True)
class PhraseType:
    name: str
    share: float  # of all requests
    pool: int  # distinct fixed phrases live at any time
    zipf: float
    churn: float  # fraction of the pool rewritten per day
    chars: tuple[int, int]


TYPES = (
    PhraseType("welcome_message", 0.12, 40, 1.2, 0.02, (60, 140)),
    PhraseType("common_responses", 0.30, 400, 1.0, 0.05, (30, 160)),
    PhraseType("error_messages", 0.04, 60, 1.1, 0.01, (40, 120)),
    PhraseType("hotel_location", 0.06, 50, 1.0, 0.01, (80, 200)),
    PhraseType("reservation_instructions", 0.08, 120, 1.0, 0.05, (120, 300)),
    PhraseType("room_options", 0.10, 200, 0.9, 0.15, (100, 260)),
)
AVAILABILITY_SHARE = 0.30
AVAILABILITY_TODAY = 0.35  # of availability answers: "today" phrases, daily pool below
AVAILABILITY_TODAY_POOL = 40
AVAILABILITY_CHARS = (90, 220)
# dates x room types x prices: templated answers repeat only by coincidence
AVAILABILITY_COMBINATIONS = 60 * 8 * 40


def audio_size(chars: int) -> int:
    return (int(BYTES_PER_SECOND * chars / CHARS_PER_SECOND) + 44) // SIZE_SCALE


class _Zipf:
    def __init__(self, n: int, s: float) -> None:
        self.cum = list(itertools.accumulate(1 / (r**s) for r in range(1, n + 1)))

    def draw(self, rng: random.Random) -> int:
        return bisect.bisect_left(self.cum, rng.random() * self.cum[-1])


def generate(*, days: int = 7, requests_per_day: int = 6000, seed: int = 42) -> list[Request]:
    """The trace, in time order."""
    rng = random.Random(seed)
    sizes: dict[str, int] = {}

    def size_of(key: str, chars: tuple[int, int]) -> int:
        if key not in sizes:
            sizes[key] = audio_size(rng.randint(*chars))
        return sizes[key]

    versions = {t.name: [0] * t.pool for t in TYPES}
    zipfs = {t.name: _Zipf(t.pool, t.zipf) for t in TYPES}
    today = _Zipf(AVAILABILITY_TODAY_POOL, 1.0)
    weights = [t.share for t in TYPES] + [AVAILABILITY_SHARE]
    out: list[Request] = []
    for day in range(days):
        if day:
            for t in TYPES:
                for rank in rng.sample(range(t.pool), int(t.pool * t.churn)):
                    versions[t.name][rank] += 1
        times = sorted(rng.randrange(86_400_000) for _ in range(requests_per_day))
        for offset in times:
            t_ms = day * 86_400_000 + offset
            pick = rng.choices(range(len(weights)), weights)[0]
            if pick < len(TYPES):
                kind = TYPES[pick]
                rank = zipfs[kind.name].draw(rng)
                key = f"{kind.name}:{rank}:v{versions[kind.name][rank]}"
                out.append(Request(t_ms, key, size_of(key, kind.chars), kind.name))
            elif rng.random() < AVAILABILITY_TODAY:
                key = f"availability_response:day{day}:{today.draw(rng)}"
                out.append(
                    Request(t_ms, key, size_of(key, AVAILABILITY_CHARS), "availability_response")
                )
            else:
                key = f"availability_response:{rng.randrange(AVAILABILITY_COMBINATIONS)}"
                out.append(
                    Request(t_ms, key, size_of(key, AVAILABILITY_CHARS), "availability_response")
                )
    return out


def working_set_bytes(trace: list[Request]) -> int:
    """Bytes of every distinct answer in the trace: what an unbounded cache would hold."""
    return sum({r.key: r.size for r in trace}.values())
