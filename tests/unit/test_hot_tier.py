"""The hot tier's rules, as pure logic over a hand-driven clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from proxy.store.hot_tier import ENTRY_OVERHEAD, HotTier
from proxy.store.invalidation import parse_message
from tests.support.clock import FakeClock

NOW_MS = 1_700_000_000_000


@dataclass(frozen=True)
class Entry:
    audio: bytes
    expires_ms: int = NOW_MS + 3_600_000


def live_tier(max_bytes: int, clock: FakeClock | None = None) -> HotTier[Entry]:
    tier: HotTier[Entry] = HotTier(max_bytes, clock=clock or FakeClock())
    tier.heard()
    return tier


def ask(tier: HotTier[Entry], key: str, entry: Entry, now_ms: int = NOW_MS) -> Entry | None:
    """One request as the store makes it: the tier, else the store and an offer."""
    found = tier.get(key, now_ms)
    if found is None:
        generation = tier.generation
        tier.offer(key, entry, generation, now_ms)
    return found


def test_admitted_on_the_second_request_and_served_from_the_third() -> None:
    tier = live_tier(1_000_000)
    entry = Entry(b"a" * 1000)
    assert ask(tier, "k", entry) is None  # first sighting: not admitted
    assert "k" not in tier
    assert ask(tier, "k", entry) is None  # second: read from the store, admitted
    assert "k" in tier
    assert ask(tier, "k", entry) is entry
    assert tier.stats.hits == 1


def test_byte_bound_holds_under_a_flood_of_distinct_entries() -> None:
    tier = live_tier(64 * 1024)
    for i in range(2000):
        entry = Entry(bytes([i % 256]) * (1000 + i % 3000))
        for _ in range(3):
            ask(tier, f"k{i}", entry)
            assert tier.bytes <= tier.max_bytes
    assert len(tier) > 0 and tier.bytes == sum(
        len(r.entry.audio) + ENTRY_OVERHEAD for r in tier._residents.values()
    )


def test_an_entry_too_large_for_the_tier_is_never_admitted() -> None:
    tier = live_tier(80_000)
    big = Entry(b"x" * 20_000)  # more than an eighth of the tier
    for _ in range(5):
        assert ask(tier, "big", big) is None
    assert len(tier) == 0


def test_a_scan_of_one_off_texts_does_not_evict_hot_entries() -> None:
    tier = live_tier(50 * (4000 + ENTRY_OVERHEAD))
    hot = {f"hot{i}": Entry(b"h" * 4000) for i in range(40)}
    for _ in range(5):
        for key, entry in hot.items():
            ask(tier, key, entry)
    assert all(key in tier for key in hot)
    for i in range(5000):  # every text once: a crawler, a batch job
        ask(tier, f"once{i}", Entry(b"o" * 4000))
    assert all(key in tier for key in hot)
    assert not any(f"once{i}" in tier for i in range(5000))


def test_a_text_asked_twice_does_not_push_out_entries_asked_more_often() -> None:
    tier = live_tier(10 * (4000 + ENTRY_OVERHEAD))
    for _ in range(4):
        for i in range(10):
            ask(tier, f"hot{i}", Entry(b"h" * 4000))
    for i in range(200):
        for _ in range(2):
            ask(tier, f"twice{i}", Entry(b"t" * 4000))
    assert sum(f"hot{i}" in tier for i in range(10)) == 10
    assert tier.stats.rejected > 0


def test_a_new_favourite_gets_in_once_it_is_asked_for_more_than_the_residents() -> None:
    tier = live_tier(8 * (1000 + ENTRY_OVERHEAD))
    for _ in range(3):
        for i in range(8):
            ask(tier, f"old{i}", Entry(b"o" * 1000))
    assert len(tier) == 8
    new = Entry(b"n" * 1000)
    for _ in range(2):
        ask(tier, "new", new)
    assert "new" not in tier  # asked twice, the residents three times
    for _ in range(4):
        ask(tier, "new", new)
    assert "new" in tier


def test_expired_entries_are_never_served_nor_admitted() -> None:
    tier = live_tier(1_000_000)
    entry = Entry(b"a" * 100, expires_ms=NOW_MS + 1000)
    ask(tier, "k", entry)
    ask(tier, "k", entry)
    assert tier.get("k", NOW_MS + 999) is entry
    assert tier.get("k", NOW_MS + 1000) is None
    assert "k" not in tier
    assert not tier.offer("k", entry, tier.generation, NOW_MS + 1000)
    assert tier.stats.expired == 1


def test_an_invalidation_during_a_store_read_keeps_the_read_out() -> None:
    tier = live_tier(1_000_000)
    old = Entry(b"old")
    tier.get("k", NOW_MS)  # sighting 1
    assert tier.get("k", NOW_MS) is None  # sighting 2: the store is read...
    generation = tier.generation
    tier.invalidate(["k"])  # ...while another replica overwrites the entry
    assert not tier.offer("k", old, generation, NOW_MS)
    assert "k" not in tier


def test_invalidate_and_clear_forget_entries() -> None:
    tier = live_tier(1_000_000)
    for key in ("a", "b", "c"):
        ask(tier, key, Entry(b"x" * 10))
        ask(tier, key, Entry(b"x" * 10))
    assert len(tier) == 3
    assert tier.invalidate(["a", "zzz"]) == 1
    assert "a" not in tier and "b" in tier
    ask(tier, "a", Entry(b"y" * 10))  # as popular as before: back on its next read
    assert "a" in tier
    tier.clear()
    assert len(tier) == 0 and tier.bytes == 0


def test_serves_only_while_the_invalidation_channel_is_heard() -> None:
    clock = FakeClock()
    tier: HotTier[Entry] = HotTier(1_000_000, clock=clock, live_seconds=1.0)
    assert not tier.live  # never heard yet
    assert not tier.offer("k", Entry(b"x"), tier.generation, NOW_MS)
    tier.heard()
    assert tier.live
    clock.now += 0.99
    assert tier.live
    clock.now += 0.02
    assert not tier.live  # silence for more than a second: stop serving
    tier.heard()
    ask(tier, "k", Entry(b"x"))
    ask(tier, "k", Entry(b"x"))
    assert "k" in tier
    tier.suspend()
    assert not tier.live and len(tier) == 0


def test_counts_age_so_old_favourites_can_leave() -> None:
    tier = live_tier(4096 * 1024)
    ask(tier, "fav", Entry(b"f"))
    ask(tier, "fav", Entry(b"f"))
    for _ in range(50):
        tier.get("fav", NOW_MS)
    before = tier._residents["fav"].hits
    for i in range(tier._age_every):
        tier.get(f"other{i}", NOW_MS)
    assert tier._residents["fav"].hits <= before // 2 + 1


def test_unreported_gives_each_event_once() -> None:
    tier = live_tier(1_000_000)
    ask(tier, "k", Entry(b"x"))
    ask(tier, "k", Entry(b"x"))
    ask(tier, "k", Entry(b"x"))
    assert tier.unreported() == {"hits": 1, "admitted": 1}
    assert tier.unreported() == {}


@pytest.mark.parametrize(
    ("data", "keys"),
    [(b"*", None), (b"abc def", ["abc", "def"]), ("one", ["one"]), (b"", [])],
)
def test_invalidation_messages(data: bytes | str, keys: list[str] | None) -> None:
    assert parse_message(data) == keys
