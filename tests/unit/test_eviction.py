"""The cleanup score and victim selection: pure functions, no Redis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.settings import SEED_CONTENT_TYPE_FACTORS, load_settings
from proxy.core.eviction import (
    Candidate,
    Scale,
    ScoreWeights,
    bytes_to_free,
    eviction_order,
    needs_cleanup,
    score,
    select_victims,
    take_until,
)

NOW = 10_000_000
SEED = ScoreWeights(content_type_factors=SEED_CONTENT_TYPE_FACTORS, age_basis="created")


def entry(
    key: str,
    *,
    age: int = 0,
    hits: int = 0,
    size: int = 100,
    cls: str = "default",
    idle: int | None = None,
) -> Candidate:
    created = NOW - age
    last = NOW - (idle if idle is not None else age)
    return Candidate(key, size, created, last, hits, cls)


def keys(cs: list[Candidate]) -> list[str]:
    return [c.key for c in cs]


def test_defaults_are_the_seeds_with_age_since_last_access() -> None:
    w = ScoreWeights.from_settings(load_settings(env={}))
    assert (w.age, w.frequency, w.age_basis) == (0.7, 0.3, "last_access")
    seed = load_settings(env={"AUDIO_CACHE_CLEANUP_AGE_BASIS": "created"})
    assert ScoreWeights.from_settings(seed).age_basis == "created"
    assert w.factor("welcome_message") < w.factor("common_responses") < w.factor("other") == 1.0


def test_older_goes_first() -> None:
    cs = [entry("young", age=10), entry("old", age=1000), entry("mid", age=500)]
    assert keys(eviction_order(cs, SEED, NOW)) == ["old", "mid", "young"]


def test_less_used_goes_first() -> None:
    cs = [entry("popular", hits=50, age=100), entry("unused", hits=0, age=100)]
    assert keys(eviction_order(cs, SEED, NOW)) == ["unused", "popular"]


def test_age_outweighs_frequency_70_30() -> None:
    # Oldest but most used vs brand new and never used: 0.7*1 + 0 > 0 + 0.3*1.
    cs = [entry("old_hot", age=1000, hits=100), entry("new_cold", age=0, hits=0)]
    assert keys(eviction_order(cs, SEED, NOW)) == ["old_hot", "new_cold"]
    freq_first = ScoreWeights(age=0.3, frequency=0.7, age_basis="created")
    assert keys(eviction_order(cs, freq_first, NOW)) == ["new_cold", "old_hot"]


def test_content_type_factor_protects_welcome_and_common() -> None:
    cs = [
        entry("welcome", age=1000, cls="welcome_message"),
        entry("common", age=1000, cls="common_responses"),
        entry("room", age=1000, cls="room_options"),
    ]
    assert keys(eviction_order(cs, SEED, NOW)) == ["room", "common", "welcome"]
    s = Scale.of(cs, NOW, "created")
    assert score(cs[0], s, SEED) == pytest.approx(0.3 * (0.7 + 0.3))


def test_size_breaks_ties_larger_first() -> None:
    cs = [entry("small", size=10), entry("large", size=1000), entry("mid", size=500)]
    assert keys(eviction_order(cs, SEED, NOW)) == ["large", "mid", "small"]


def test_last_access_basis_keeps_recently_used_old_entries() -> None:
    cs = [entry("old_but_just_hit", age=1000, idle=1, hits=1), entry("stale", age=500, hits=1)]
    assert keys(eviction_order(cs, SEED, NOW))[0] == "old_but_just_hit"
    recency = ScoreWeights()
    assert keys(eviction_order(cs, recency, NOW))[0] == "stale"


def test_unknown_age_basis_is_refused() -> None:
    with pytest.raises(ValueError, match="age_basis"):
        ScoreWeights(age_basis="whenever")


def test_select_victims_frees_just_enough_in_order() -> None:
    cs = [entry(f"e{i}", age=i * 10, size=100) for i in range(10)]
    victims = select_victims(cs, 250, SEED, NOW)
    assert keys(victims) == ["e9", "e8", "e7"]
    assert select_victims(cs, 0, SEED, NOW) == []
    assert len(select_victims(cs, 10**9, SEED, NOW)) == 10


def test_thresholds() -> None:
    assert not needs_cleanup(94, 100, 95)
    assert needs_cleanup(95, 100, 95)
    assert bytes_to_free(96, 80) == 16
    assert bytes_to_free(50, 80) == 0
    assert take_until([], 10) == []


candidates = st.lists(
    st.builds(
        Candidate,
        key=st.text("abcdef0123456789", min_size=4, max_size=8),
        size=st.integers(1, 10_000),
        created_ms=st.integers(0, NOW),
        last_access_ms=st.integers(0, NOW),
        hits=st.integers(0, 1000),
        content_class=st.sampled_from(["default", "welcome_message", "common_responses"]),
    ),
    max_size=40,
)


@given(candidates, st.integers(0, 200_000))
def test_victims_reach_the_target_with_no_spare_entry(cs: list[Candidate], need: int) -> None:
    victims = select_victims(cs, need, SEED, NOW)
    freed = sum(c.size for c in victims)
    if need > 0 and sum(c.size for c in cs) >= need:
        assert freed >= need
        assert freed - victims[-1].size < need  # the last victim was needed
    order = eviction_order(cs, SEED, NOW)
    assert victims == order[: len(victims)]


@given(candidates)
def test_scores_stay_in_unit_range(cs: list[Candidate]) -> None:
    scale = Scale.of(cs, NOW, "created")
    for c in cs:
        assert 0.0 <= score(c, scale, SEED) <= 1.0


@given(candidates, st.integers(1, 7))
def test_scale_gathered_in_parts_equals_the_whole(cs: list[Candidate], parts: int) -> None:
    whole = Scale.of(cs, NOW, "last_access")
    step = max(1, len(cs) // parts)
    pieced = Scale(NOW, 0, 0)
    for i in range(0, len(cs), step):
        pieced = pieced.widen(Scale.of(cs[i : i + step], NOW, "last_access"))
    assert pieced == whole
