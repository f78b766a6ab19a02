"""Single flight across replicas: two proxy apps, each with its own Redis connections, on one
real Valkey under the same key prefix, in front of one streaming loopback upstream."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from proxy.app import PROCESSOR, REDIS
from proxy.core.keys import CacheKey
from proxy.request.coalescing import FlightKeys
from proxy.store.service import Keyspace
from tests.support.proxies import service_of
from tests.support.speech import speech_body
from tests.support.streaming_upstream import StreamingUpstream, serve
from tests.support.waits import eventually

TEXT = "Breakfast is served from seven to eleven"
SPEECH = speech_body(TEXT)


def coalesced(scope: str) -> float:
    return REGISTRY.get_sample_value("tts_proxy_coalesced_requests_total", {"scope": scope}) or 0.0


@pytest.fixture
async def streaming() -> AsyncIterator[tuple[StreamingUpstream, str]]:
    upstream = StreamingUpstream(chunks=5, chunk_size=2000, delay=0.05, head_delay=0.1)
    async with serve(upstream) as url:
        yield upstream, url


async def pair(make_proxy: Any, url: str, **settings: Any) -> tuple[Any, Any]:
    """Two replicas sharing one Valkey and one key prefix. Anonymous clients: these tests
    are about flights; how upstream credentials share them is in test_client_auth."""
    settings.setdefault("client_auth", "none")
    prefix = f"c{uuid.uuid4().hex[:10]}"
    return (
        await make_proxy(url, prefix=prefix, **settings),
        await make_proxy(url, prefix=prefix, **settings),
    )


def key_of(client: Any) -> CacheKey:
    """The cache key of SPEECH on this proxy."""
    processor = client.app[PROCESSOR]
    rule = next(r for r in processor.rules if r.name == "openai")
    speech = rule.describe(path_params={}, query="", headers={}, body=json.dumps(SPEECH).encode())
    return processor.key_for(speech)  # type: ignore[no-any-return]


async def test_fifty_concurrent_misses_on_two_replicas_make_one_upstream_call(
    streaming: Any, make_proxy: Any
) -> None:
    upstream, url = streaming
    a, b = await pair(make_proxy, url)
    before = coalesced("process") + coalesced("cluster")

    async def one(client: Any) -> tuple[int, str, bytes]:
        response = await client.post("/v1/audio/speech", json=SPEECH)
        return response.status, response.headers["Cache-Status"], await response.read()

    results = await asyncio.gather(*(one(a if i % 2 else b) for i in range(50)))
    assert upstream.calls == 1
    assert {status for status, _, _ in results} == {200}
    assert {body for _, _, body in results} == {upstream.audio(TEXT)}
    leaders = [s for _, s, _ in results if "collapsed" not in s and "hit" not in s]
    assert leaders == ["tts-cache; fwd=miss; stored"]
    collapsed = sum("collapsed" in s for _, s, _ in results)
    assert collapsed >= 40  # the rest arrived after the store, as hits
    assert coalesced("process") + coalesced("cluster") - before == collapsed
    # Nothing of the flight is left behind but the stored entry.
    keys = FlightKeys.of(Keyspace(a.app[PROCESSOR].settings.audio_cache_key_prefix), key_of(a))
    redis = a.app[REDIS]

    async def unlocked() -> bool:
        return not await redis.exists(keys.lock)

    # The lock goes right after the last record.
    await eventually(unlocked, 2.0, what="the leader kept its lock")
    assert 0 < await redis.pttl(keys.stream) <= 10_000  # a short linger for late readers
    assert await service_of(b).fetch(key_of(b)) is not None


async def test_a_follower_on_another_replica_hears_the_audio_as_it_is_made(
    streaming: Any, make_proxy: Any
) -> None:
    upstream, url = streaming
    upstream.delay = 0.15
    a, b = await pair(make_proxy, url)
    loop = asyncio.get_running_loop()
    cluster_before = coalesced("cluster")
    leader = await a.post("/v1/audio/speech", json=SPEECH)
    leader_first = await leader.content.readany()
    follower = await b.post("/v1/audio/speech", json=SPEECH)
    first = await follower.content.readany()
    first_at = loop.time()
    assert first
    rest = await follower.read()
    assert not upstream.finished_at or first_at < upstream.finished_at[0] - 0.2
    assert first + rest == upstream.audio(TEXT) == leader_first + await leader.read()
    assert follower.headers["Cache-Status"] == "tts-cache; fwd=miss; collapsed; stored"
    assert follower.headers["X-Audio-Cache-Key"] == leader.headers["X-Audio-Cache-Key"]
    assert upstream.calls == 1
    assert coalesced("cluster") - cluster_before == 1


async def test_a_dead_leader_that_keeps_its_lock_costs_followers_only_the_wait(
    streaming: Any, make_proxy: Any
) -> None:
    upstream, url = streaming
    a, b = await pair(make_proxy, url, coalescing_wait_seconds=1.0)
    keys = FlightKeys.of(Keyspace(a.app[PROCESSOR].settings.audio_cache_key_prefix), key_of(a))
    await a.app[REDIS].set(keys.lock, "a-replica-that-died", px=60_000)
    started = time.monotonic()

    async def one(client: Any) -> tuple[int, dict[str, Any]]:
        response = await client.post("/v1/audio/speech", json=SPEECH)
        return response.status, await response.json()

    results = await asyncio.gather(*(one(a if i % 2 else b) for i in range(10)))
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 1.8
    assert {status for status, _ in results} == {504}
    assert {body["error"]["upstream_error"] for _, body in results} == {"coalescing_timeout"}
    assert upstream.calls == 0
    assert await service_of(a).fetch(key_of(a)) is None


async def test_when_a_dead_leader_lock_expires_one_follower_takes_over(
    streaming: Any, make_proxy: Any
) -> None:
    upstream, url = streaming
    a, b = await pair(make_proxy, url, coalescing_wait_seconds=3.0)
    keys = FlightKeys.of(Keyspace(a.app[PROCESSOR].settings.audio_cache_key_prefix), key_of(a))
    await a.app[REDIS].set(keys.lock, "a-replica-that-died", px=400)
    started = time.monotonic()

    async def one(client: Any) -> bytes:
        response = await client.post("/v1/audio/speech", json=SPEECH)
        assert response.status == 200
        return await response.read()

    bodies = await asyncio.gather(*(one(a if i % 2 else b) for i in range(10)))
    assert time.monotonic() - started < 3.0
    assert set(bodies) == {upstream.audio(TEXT)}
    assert upstream.calls == 1
    assert await service_of(a).fetch(key_of(a)) is not None


async def test_a_killed_leader_fill_hands_its_followers_the_error(make_proxy: Any) -> None:
    upstream = StreamingUpstream(mode="hang_head")
    async with serve(upstream) as url:
        a, b = await pair(make_proxy, url, coalescing_wait_seconds=5.0)
        leader = asyncio.create_task(a.post("/v1/audio/speech", json=SPEECH))
        await eventually(lambda: upstream.calls, 3.0)
        followers = [asyncio.create_task(b.post("/v1/audio/speech", json=SPEECH)) for _ in range(5)]
        await asyncio.sleep(0.3)  # time for the followers to reach the stream (and not end)
        assert not any(f.done() for f in followers)
        started = time.monotonic()
        (fill,) = a.app[PROCESSOR].fills.active()
        assert fill.task is not None
        fill.task.cancel()
        responses = await asyncio.gather(leader, *followers)
        assert time.monotonic() - started < 1.0
        for response in responses:
            assert response.status == 502
            assert (await response.json())["error"]["upstream_error"] == "abandoned"
        upstream.release.set()
        assert upstream.calls == 1
        assert await service_of(a).fetch(key_of(a)) is None


async def test_an_upstream_failure_mid_stream_reaches_followers_and_is_not_stored(
    make_proxy: Any,
) -> None:
    upstream = StreamingUpstream(chunks=6, delay=0.1, head_delay=0.1, mode="fail")
    async with serve(upstream) as url:
        a, b = await pair(make_proxy, url)

        async def one(client: Any) -> bytes:
            response = await client.post("/v1/audio/speech", json=SPEECH)
            assert response.status == 200
            return await response.read()

        results = await asyncio.gather(
            *(one(a if i % 2 else b) for i in range(6)), return_exceptions=True
        )
        assert all(isinstance(r, aiohttp.ClientPayloadError) for r in results), results
        assert upstream.calls == 1
        assert await service_of(a).fetch(key_of(a)) is None


async def test_an_upstream_error_answer_is_shared_and_not_stored(make_proxy: Any) -> None:
    upstream = StreamingUpstream(mode="error", head_delay=0.2)
    async with serve(upstream) as url:
        a, b = await pair(make_proxy, url)

        async def one(client: Any) -> tuple[int, bytes]:
            response = await client.post("/v1/audio/speech", json=SPEECH)
            return response.status, await response.read()

        results = await asyncio.gather(*(one(a if i % 2 else b) for i in range(6)))
        assert set(results) == {(500, b'{"error": {"message": "synthesis failed"}}')}
        assert upstream.calls == 1
        assert await service_of(a).fetch(key_of(a)) is None


async def test_an_abandoned_fill_is_kept_for_followers_on_other_replicas(
    streaming: Any, make_proxy: Any
) -> None:
    upstream, url = streaming
    upstream.delay = 0.1
    a, b = await pair(make_proxy, url, fill_continue_after_disconnect=False)
    leader = await a.post("/v1/audio/speech", json=SPEECH)
    assert await leader.content.readany()
    follower = await b.post("/v1/audio/speech", json=SPEECH)
    assert await follower.content.readany()
    leader.close()  # the leader's only client leaves; a follower elsewhere still listens
    await follower.read()
    assert upstream.aborted == 0
    assert upstream.calls == 1

    async def stored() -> bool:
        return await service_of(a).fetch(key_of(a)) is not None

    await eventually(stored, 3.0, what="the completed audio was not stored")


async def test_without_coalescing_each_replica_calls_the_upstream(
    streaming: Any, make_proxy: Any
) -> None:
    upstream, url = streaming
    a, b = await pair(make_proxy, url, coalescing_enabled=False)
    responses = await asyncio.gather(*(c.post("/v1/audio/speech", json=SPEECH) for c in (a, b)))
    for response in responses:
        assert await response.read() == upstream.audio(TEXT)
    assert upstream.calls == 2
