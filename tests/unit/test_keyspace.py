"""Every Redis key name and channel, from proxy.store.keyspace (pure)."""

from __future__ import annotations

from proxy.core.keys import CacheKey
from proxy.store.credentials import Credentials
from proxy.store.keyspace import SHARDS, Keyspace, shard_of, shard_of_hex

SPACE = Keyspace("ttsc")
KEY = CacheKey("ab12" + "0" * 60)  # 0xab12 % 64 == 18


def tag(name: str) -> str:
    """The Redis Cluster hash tag of a key name: what decides its slot."""
    start = name.index("{")
    return name[start + 1 : name.index("}", start)]


def test_names_follow_the_documented_layout() -> None:
    assert shard_of(KEY) == 0xAB12 % SHARDS == 18
    assert SPACE.entry(KEY) == "ttsc:{ttsc.18}:e:" + KEY.hex
    assert SPACE.shard_keys(18) == [
        "ttsc:{ttsc.18}:stats",
        "ttsc:{ttsc.18}:idx",
        "ttsc:{ttsc.18}:exp",
    ]
    assert SPACE.selector(3, "voice", "alloy") == "ttsc:{ttsc.03}:sel:voice:alloy"
    assert SPACE.flight_lock(KEY) == "ttsc:{ttsc.18}:fl:" + KEY.hex
    assert SPACE.flight_stream(KEY) == "ttsc:{ttsc.18}:fs:" + KEY.hex
    assert SPACE.flight_followers(KEY) == "ttsc:{ttsc.18}:ff:" + KEY.hex
    assert SPACE.channel() == "ttsc:invalidate"
    assert SPACE.cleanup_lock() == "ttsc:cleanup:lock"
    assert SPACE.cleanup_history() == "ttsc:cleanup:history"
    assert SPACE.prefetch_job("0123456789abcdef") == "ttsc:prefetch:job:0123456789abcdef"


def test_the_small_keys_keep_the_names_deployments_already_hold() -> None:
    # Limit windows, verified credentials and the key secret were named before the keyspace
    # owned them: a renamed key would reset every budget and every key secret in place.
    assert SPACE.limit_window("key:a", "rpm", 29_000_000) == "ttsc:limit:{key:a}:rpm:29000000"
    assert SPACE.limit_window("tenant:acme", "cpd", 20_000) == "ttsc:limit:{tenant:acme}:cpd:20000"
    assert SPACE.credential("c0ffee") == "ttsc:cred:c0ffee"
    assert SPACE.key_secret() == "ttsc:key-secret"


def test_credentials_use_the_keyspace_name() -> None:
    assert Credentials(None, "ttsc", 60).key("d1") == SPACE.credential("d1") == "ttsc:cred:d1"


def test_the_prefixes_given_to_lua_compose_the_same_names() -> None:
    # The scripts append a key (or dimension:value) to these prefixes; the names they make
    # must be the very names Python reads and purges by.
    n = shard_of(KEY)
    assert SPACE.entry_prefix(n) + KEY.hex == SPACE.entry(KEY)
    assert SPACE.selector_prefix(n) + "tenant" + ":" + "acme" == SPACE.selector(n, "tenant", "acme")


def test_every_key_of_one_cache_key_shares_its_shard_hash_tag() -> None:
    n = shard_of(KEY)
    names = [
        SPACE.entry(KEY),
        *SPACE.shard_keys(n),
        SPACE.selector(n, "model", "tts-1"),
        SPACE.flight_lock(KEY),
        SPACE.flight_stream(KEY),
        SPACE.flight_followers(KEY),
        SPACE.flight_bytes(n),
    ]
    assert {tag(name) for name in names} == {"ttsc.18"}
    assert len(set(names)) == len(names)


def test_shards_have_distinct_tags_and_cover_every_key() -> None:
    assert len({tag(SPACE.stats(n)) for n in range(SHARDS)}) == SHARDS
    hexes = [f"{i:04x}" + "0" * 60 for i in range(0, 65536, 257)]
    assert {shard_of_hex(h) for h in hexes} == set(range(SHARDS))
    assert all(shard_of(CacheKey(h)) == shard_of_hex(h) for h in hexes)


def test_prefixes_keep_caches_apart() -> None:
    other = Keyspace("tenant-b")
    mine = [SPACE.entry(KEY), *SPACE.shard_keys(0), SPACE.channel(), SPACE.cleanup_lock()]
    theirs = [other.entry(KEY), *other.shard_keys(0), other.channel(), other.cleanup_lock()]
    assert all(name.startswith("ttsc:") for name in mine)
    assert all(name.startswith("tenant-b:") for name in theirs)
    assert not set(mine) & set(theirs)
