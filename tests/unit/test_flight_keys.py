"""The Redis keys of a cross-replica flight live in the slot of the entry they fill."""

from __future__ import annotations

from proxy.core.keys import CacheKey
from proxy.request.coalescing import FlightKeys
from proxy.store.service import Keyspace


def test_flight_keys_share_the_entry_shard_hash_tag() -> None:
    keyspace = Keyspace("ttsc")
    key = CacheKey("ab" * 32)
    keys = FlightKeys.of(keyspace, key)
    tag = keyspace.entry(key).split("}")[0] + "}"
    assert tag.startswith("ttsc:{ttsc.")
    names = (keys.lock, keys.stream, keys.followers, keys.stats, keys.held)
    assert {k.split("}")[0] + "}" for k in names} == {tag}
    assert len({keys.lock, keys.stream, keys.followers, keyspace.entry(key)}) == 4
