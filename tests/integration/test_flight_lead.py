"""Taking the lead of a cross-replica fill: one round trip takes the lock, clears an earlier
leader's records and says whether the answer was stored since the request missed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from proxy.core.keys import CacheKey
from proxy.request.coalescing import ClusterFlights
from proxy.request.fill import Fill
from proxy.store.embedded import EmbeddedValkey
from proxy.store.pipelined import PipelinedReads
from proxy.store.schema import HIT_FIELDS
from proxy.store.service import AudioCacheService, EntryLabels
from tests.support.waits import eventually

AUDIO = b"RIFF" + bytes(range(256)) * 40


@pytest.fixture(params=["redis-py", "lookups"])
async def store(
    redis_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[ClusterFlights, AudioCacheService]]:
    """Flights taking their lead through redis-py, or on the lookups' pipelined connection
    (as the proxy does on a plain server): every test here holds for both."""
    client = aioredis.Redis.from_url(redis_url)
    prefix = f"fl{uuid.uuid4().hex[:10]}"
    reads = (
        (lambda fields: PipelinedReads(redis_url, fields)) if request.param == "lookups" else None
    )
    service = AudioCacheService(client, prefix=prefix, reads=reads)
    flights = ClusterFlights(client, prefix=prefix, fetch=service.fetch, commands=service.pipelined)
    assert (flights.commands is None) == (request.param == "redis-py")
    try:
        yield flights, service
    finally:
        await service.close_reads()
        await client.aclose()


def new_key() -> CacheKey:
    return CacheKey(uuid.uuid4().hex * 2)


class Upstream:
    """A stand-in for the upstream call: counts its calls, answers AUDIO."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, fill: Fill) -> None:
        self.calls += 1
        await fill.set_head(200, [("Content-Type", "audio/wav")])
        await fill.add(AUDIO)
        await fill.finish(complete=True)
        fill.settle(stored=False, refusal="not stored by this stand-in")


async def test_an_answer_stored_since_the_miss_is_replayed_without_an_upstream_call(
    store: tuple[ClusterFlights, AudioCacheService],
) -> None:
    flights, service = store
    key = new_key()
    keys = flights.keys(key)
    await service.put(key, AUDIO, media_type="audio/wav", ttl_seconds=60, labels=EntryLabels())
    # The stream of the leader that stored it: late followers may still be reading it.
    await flights.redis.xadd(keys.stream, {"k": "d", "st": "1"})
    upstream, fill = Upstream(), Fill(key.hex)
    await flights.run(fill, key, upstream, recheck=service.fetch_fresh, entry=key)
    assert upstream.calls == 0
    assert (fill.origin, fill.status, fill.body(), fill.stored) == ("cache", 200, AUDIO, True)
    assert await flights.redis.exists(keys.stream) == 1
    # The lock goes with the replay: a refresh right after leads at once (it does not
    # follow the old stream until the lock expires).
    assert await flights.redis.exists(keys.lock) == 0


async def test_a_new_leader_clears_the_records_of_the_one_before(
    store: tuple[ClusterFlights, AudioCacheService],
) -> None:
    flights, _ = store
    key = new_key()
    keys = flights.keys(key)
    await flights.redis.xadd(keys.stream, {"k": "h", "s": "500", "h": "[]"})
    await flights.redis.set(keys.followers, 3)
    upstream, fill = Upstream(), Fill(key.hex)

    async def lead(fill: Fill) -> None:
        # While leading: the old records are gone, the lock is this replica's.
        assert await flights.redis.xlen(keys.stream) == 0
        assert await flights.redis.get(keys.followers) is None
        assert await flights.redis.exists(keys.lock) == 1
        await upstream(fill)

    await flights.run(fill, key, lead, recheck=None, entry=key)
    assert upstream.calls == 1
    assert (fill.origin, fill.body()) == ("upstream", AUDIO)
    assert await flights.redis.exists(keys.lock) == 0  # let go once the fill ended


async def test_an_expired_entry_kept_for_its_grace_period_is_filled_again(
    store: tuple[ClusterFlights, AudioCacheService],
) -> None:
    flights, service = store
    key = new_key()
    keys = flights.keys(key)
    await service.put(key, AUDIO, media_type="audio/wav", ttl_seconds=0, labels=EntryLabels())
    await flights.redis.xadd(keys.stream, {"k": "h", "s": "500", "h": "[]"})
    upstream, fill = Upstream(), Fill(key.hex)

    async def lead(fill: Fill) -> None:
        assert await flights.redis.xlen(keys.stream) == 0  # the stale leader's records
        await upstream(fill)

    async def fresh(key: CacheKey) -> None:
        return None  # what fetch_fresh says of an entry past its TTL

    await flights.run(fill, key, lead, recheck=fresh, entry=key)
    assert (upstream.calls, fill.origin) == (1, "upstream")


async def test_a_held_lock_makes_a_follower(
    store: tuple[ClusterFlights, AudioCacheService],
) -> None:
    flights, _ = store
    key = new_key()
    keys = flights.keys(key)
    await flights.redis.set(keys.lock, "another leader", px=60_000)
    await flights.redis.xadd(keys.stream, {"k": "h", "s": "200", "h": '[["Content-Type", "a/b"]]'})
    await flights.redis.xadd(keys.stream, {"k": "c", "d": AUDIO})
    await flights.redis.xadd(keys.stream, {"k": "e", "ok": "1"})
    await flights.redis.xadd(keys.stream, {"k": "d", "st": "0", "r": "x", "n": str(len(AUDIO))})
    upstream, fill = Upstream(), Fill(key.hex)
    await flights.run(fill, key, upstream, recheck=None, entry=key)
    assert upstream.calls == 0
    assert (fill.origin, fill.body(), fill.stored) == ("cluster", AUDIO, False)
    assert await flights.redis.get(keys.lock) == b"another leader"


# -- taking the lead beside the lookup ------------------------------------------------------


async def test_a_claim_on_a_stored_entry_takes_nothing(
    store: tuple[ClusterFlights, AudioCacheService],
) -> None:
    flights, service = store
    key = new_key()
    await service.put(key, AUDIO, media_type="audio/wav", ttl_seconds=60, labels=EntryLabels())
    claim = flights.claim(key)
    assert claim is not None
    assert await claim.taken == 3
    assert await flights.redis.exists(flights.keys(key).lock) == 0
    flights.let_go(claim)
    again = await eventually(lambda: flights.claim(key))  # a new claim may be taken
    assert await again.taken == 3
    flights.let_go(again)


async def test_a_claim_nobody_adopts_is_let_go(
    store: tuple[ClusterFlights, AudioCacheService],
) -> None:
    flights, _ = store
    key = new_key()
    claim = flights.claim(key)
    assert claim is not None and flights.claim(key) is None  # one claim per key at a time
    assert await claim.taken == 1
    assert await flights.redis.get(flights.keys(key).lock) == claim.lock.token.encode()
    flights.let_go(claim)

    async def released() -> bool:
        return await flights.redis.exists(flights.keys(key).lock) == 0

    await eventually(released)


async def test_the_fill_started_for_a_claimed_key_adopts_the_claim(
    store: tuple[ClusterFlights, AudioCacheService],
) -> None:
    flights, service = store
    key = new_key()
    keys = flights.keys(key)
    claim = flights.claim(key)
    assert claim is not None
    upstream, fill = Upstream(), Fill(key.hex)
    held: list[bytes | None] = []

    async def lead(fill: Fill) -> None:
        held.append(await flights.redis.get(keys.lock))
        await upstream(fill)

    running = asyncio.ensure_future(
        flights.run(fill, key, lead, recheck=service.fetch_fresh, entry=key)
    )
    flights.let_go(claim)  # as the request does once its fill is started: a no-op now
    await running
    assert held == [claim.lock.token.encode()]
    assert (upstream.calls, fill.origin) == (1, "upstream")
    assert await flights.redis.exists(keys.lock) == 0


async def test_a_claim_lost_to_another_replica_follows_its_leader(
    store: tuple[ClusterFlights, AudioCacheService],
) -> None:
    flights, service = store
    key = new_key()
    keys = flights.keys(key)
    await flights.redis.set(keys.lock, "another leader", px=60_000)
    claim = flights.claim(key)
    assert claim is not None
    await flights.redis.xadd(keys.stream, {"k": "h", "s": "200", "h": "[]"})
    await flights.redis.xadd(keys.stream, {"k": "c", "d": AUDIO})
    await flights.redis.xadd(keys.stream, {"k": "e", "ok": "1"})
    await flights.redis.xadd(keys.stream, {"k": "d", "st": "0", "r": "x", "n": str(len(AUDIO))})
    upstream, fill = Upstream(), Fill(key.hex)
    await flights.run(fill, key, upstream, recheck=service.fetch_fresh, entry=key)
    flights.let_go(claim)
    assert (upstream.calls, fill.origin, fill.body()) == (0, "cluster", AUDIO)
    assert await flights.redis.get(keys.lock) == b"another leader"


async def test_a_lead_on_the_lookups_connection_goes_in_the_lookups_write(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    lookups = PipelinedReads(redis_url, HIT_FIELDS)
    prefix = f"fl{uuid.uuid4().hex[:10]}"
    flights = ClusterFlights(client, prefix=prefix, commands=lookups)
    try:
        key = new_key()
        await lookups.hmget(flights.keyspace.entry(new_key()))  # connected
        claim = flights.claim(key)
        assert claim is not None
        # The lookup the claim goes beside, asked for in the same turn (as a request does).
        missing = await lookups.hmget(flights.keyspace.entry(key))
        assert missing[0] is None
        assert await claim.taken == 1
        assert await client.get(flights.keys(key).lock) == claim.lock.token.encode()
        link = lookups._link
        assert link is not None and link.transport is not None
        port = link.transport.get_extra_info("sockname")[1]
        listed = (await client.execute_command("CLIENT", "LIST")).decode()
        mine = [line for line in listed.splitlines() if f"addr=127.0.0.1:{port} " in line]
        assert len(mine) == 1 and "cmd=evalsha" in mine[0], mine
        flights.let_go(claim)
    finally:
        await lookups.aclose()
        await client.aclose()


async def test_a_server_without_the_script_loaded_still_decides_the_lead(
    private_valkey: EmbeddedValkey,
) -> None:
    url = private_valkey.url
    client = aioredis.Redis.from_url(url)
    lookups = PipelinedReads(url, HIT_FIELDS)
    prefix = f"fl{uuid.uuid4().hex[:10]}"
    one = ClusterFlights(client, prefix=prefix, commands=lookups)
    other = ClusterFlights(client, prefix=prefix, commands=lookups)
    try:
        key = new_key()
        await client.script_flush()  # a restarted server, say: EVALSHA says NOSCRIPT
        claim = one.claim(key)
        assert claim is not None and await claim.taken == 1
        lost = other.claim(key)
        assert lost is not None and await lost.taken == 0  # another replica's lead
        assert await client.get(one.keys(key).lock) == claim.lock.token.encode()
        one.let_go(claim)
        other.let_go(lost)
        # A whole lead, its records and its release, on a server that forgot them all.
        await client.script_flush()
        later = new_key()
        upstream, fill = Upstream(), Fill(later.hex)
        await one.run(fill, later, upstream, recheck=None, entry=later)
        assert (upstream.calls, fill.origin, fill.body()) == (1, "upstream", AUDIO)
        records = await client.xrange(one.keys(later).stream)
        assert [fields[b"k"] for _, fields in records] == [b"h", b"c", b"e", b"d"]
        assert await client.exists(one.keys(later).lock) == 0
    finally:
        await lookups.aclose()
        await client.aclose()
