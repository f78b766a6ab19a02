"""The store on a real Valkey: the stored format read and written as it always was, every
call refused while the circuit breaker is open, and Lua errors that name their file."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.app import SERVICE, create_app
from proxy.config.settings import load_settings
from proxy.core.breaker import BreakerState, CircuitBreaker
from proxy.core.compression import CompressionAdvisor
from proxy.core.keys import CacheKey
from proxy.core.packing import Codec, pack
from proxy.store.client import open_redis
from proxy.store.embedded import EmbeddedValkey
from proxy.store.guard import CacheUnavailable, StoreGuard
from proxy.store.keyspace import shard_of
from proxy.store.lua import Lua, read
from proxy.store.service import AudioCacheService, EntryLabels
from tests.support.proxies import service_of
from tests.support.waits import until_stored

KEY = CacheKey("5e" * 32)
AUDIO = b"RIFF" + bytes(range(256)) * 16
LABELS = EntryLabels(
    content_class="welcome_message", route="openai", voice="alloy", model="tts-1", tenant="acme"
)


@pytest.fixture
async def service(redis_url: str) -> AsyncIterator[AudioCacheService]:
    redis = open_redis(redis_url)
    yield AudioCacheService(
        redis,
        prefix=f"s{uuid.uuid4().hex[:10]}",
        advisor=CompressionAdvisor(False, 0, 0.05),  # stored as given
    )
    await redis.aclose()


# -- the stored format ----------------------------------------------------------------------


async def test_an_entry_in_the_stored_format_reads_back(service: AudioCacheService) -> None:
    # Written by hand, field by field, the way a put has always written an entry: what
    # earlier versions stored must still be read, counted and deleted.
    redis, n = service.redis, shard_of(KEY)
    base = f"{service.keyspace.prefix}:{{{service.keyspace.prefix}.{n:02d}}}:"
    packed = pack(AUDIO)
    now = int(time.time() * 1000)
    await redis.hset(
        base + "e:" + KEY.hex,
        mapping={
            "b": packed.data, "ct": "audio/wav", "hd": '[["X-Sample-Rate","24000"]]',
            "c": now, "x": now + 60_000, "t": 60, "cls": "welcome_message", "n": 3,
            "la": now, "os": len(AUDIO), "ss": len(packed.data), "cd": "none",
            "ck": packed.checksum, "r": "openai", "v": "alloy", "m": "tts-1", "tn": "acme",
        },
    )  # fmt: skip
    await redis.pexpire(base + "e:" + KEY.hex, 60_000)
    record = {"s": len(packed.data), "o": len(AUDIO), "z": 0, "c": "welcome_message",
              "t": "acme", "v": "alloy", "m": "tts-1", "r": "openai", "cr": now}  # fmt: skip
    await redis.hset(base + "idx", KEY.hex, json.dumps(record, separators=(",", ":")))
    await redis.zadd(base + "exp", {KEY.hex: now + 60_000})

    found = await service.fetch(KEY)
    assert found is not None
    assert (found.audio, found.media_type, found.headers) == (
        AUDIO, "audio/wav", (("X-Sample-Rate", "24000"),),
    )  # fmt: skip
    assert (found.created_ms, found.expires_ms, found.content_class) == (
        now, now + 60_000, "welcome_message",
    )  # fmt: skip
    info = await service.info(KEY)
    assert info is not None
    assert (info.size, info.stored_size, info.hits, info.tenant) == (
        len(AUDIO), len(packed.data), 3, "acme",
    )  # fmt: skip
    assert 0 < await service.ttl_ms(KEY) <= 60_000
    records = await service.records(n)
    assert records == {KEY.hex: record}
    # The counters rebuilt from that record, then undone by a delete.
    await service.repair()
    totals = await service.totals()
    assert (totals["entries"], totals["bytes"], totals["class:welcome_message:entries"]) == (
        1, len(packed.data), 1,
    )  # fmt: skip
    assert await service.delete(KEY)
    totals = await service.totals()
    assert (totals["entries"], totals["bytes"], totals["deleted"]) == (0, 0, 1)
    assert await redis.exists(base + "e:" + KEY.hex) == 0
    assert await redis.hlen(base + "idx") == 0


async def test_a_put_writes_the_stored_format(service: AudioCacheService) -> None:
    redis, n = service.redis, shard_of(KEY)
    base = f"{service.keyspace.prefix}:{{{service.keyspace.prefix}.{n:02d}}}:"
    before = int(time.time() * 1000)
    await service.put(
        KEY, AUDIO, media_type="audio/wav", ttl_seconds=60, labels=LABELS,
        headers=[("X-Sample-Rate", "24000")],
    )  # fmt: skip
    stored = await redis.hgetall(base + "e:" + KEY.hex)
    created = int(stored[b"c"])
    assert before <= created <= before + 5000
    packed = pack(AUDIO, Codec.NONE)
    assert stored == {
        b"b": packed.data, b"ct": b"audio/wav", b"hd": b'[["X-Sample-Rate","24000"]]',
        b"c": str(created).encode(), b"x": str(created + 60_000).encode(), b"t": b"60",
        b"cls": b"welcome_message", b"n": b"0", b"la": str(created).encode(),
        b"os": str(len(AUDIO)).encode(), b"ss": str(len(packed.data)).encode(),
        b"cd": b"none", b"ck": str(packed.checksum).encode(), b"r": b"openai",
        b"v": b"alloy", b"m": b"tts-1", b"tn": b"acme",
    }  # fmt: skip
    expected_record = (
        f'{{"s":{len(packed.data)},"o":{len(AUDIO)},"z":0,"c":"welcome_message","t":"acme",'
        f'"v":"alloy","m":"tts-1","r":"openai","cr":{created}}}'
    )
    assert await redis.hget(base + "idx", KEY.hex) == expected_record.encode()
    assert await redis.zscore(base + "exp", KEY.hex) == created + 60_000
    for dim, value in [("voice", "alloy"), ("model", "tts-1"), ("tenant", "acme"),
                       ("class", "welcome_message"), ("route", "openai")]:  # fmt: skip
        assert await redis.smembers(f"{base}sel:{dim}:{value}") == {KEY.hex.encode()}
    stats = await redis.hgetall(base + "stats")
    assert stats[b"entries"] == b"1"
    assert stats[b"tenant:acme:bytes"] == str(len(packed.data)).encode()


# -- reads --------------------------------------------------------------------------------


async def test_reads_of_one_entry_share_what_was_derived_until_it_changes(
    service: AudioCacheService,
) -> None:
    put = {"media_type": "audio/wav", "ttl_seconds": 60, "labels": LABELS}
    await service.put(KEY, AUDIO, **put)
    first, second = await service.fetch(KEY), await service.fetch(KEY)
    assert first is not None and second is not None and first is not second
    first.memo["derived"] = "from the first read"
    assert second.memo is first.memo
    for changed in ({**put, "headers": [("X-Voice", "b")]}, {**put, "media_type": "audio/x-wav"}):
        await service.put(KEY, AUDIO, **changed)
        third = await service.fetch(KEY)
        assert third is not None and "derived" not in third.memo
        third.memo["derived"] = "again"
    await service.put(KEY, AUDIO[::-1], **put)
    fourth = await service.fetch(KEY)
    assert fourth is not None and fourth.audio == AUDIO[::-1] and "derived" not in fourth.memo


async def test_a_hit_read_from_the_store_answers_the_entry_as_it_is_now(
    upstream: Any, make_proxy: Any
) -> None:
    _, url = upstream
    client = await make_proxy(url, audio_cache_hot_tier_mb=0, client_auth="none")
    speech = {"model": "tts-1", "voice": "alloy", "input": "Checkout is at noon."}
    first = await client.post("/v1/audio/speech", json=speech)
    original = await first.read()
    await until_stored(client, first)
    hit = await client.post("/v1/audio/speech", json=speech)
    assert hit.headers["X-Cache"] == "HIT" and await hit.read() == original
    key = CacheKey(first.headers["X-Audio-Cache-Key"])
    replaced = original + b"\x00\x01" * 50
    await service_of(client).put(
        key, replaced, media_type="audio/x-wav", ttl_seconds=60, labels=LABELS,
        headers=[("X-Sample-Rate", "16000")],
    )  # fmt: skip
    again = await client.post("/v1/audio/speech", json=speech)
    assert again.headers["X-Cache"] == "HIT" and await again.read() == replaced
    assert again.headers["Content-Length"] == str(len(replaced))
    assert again.headers["Content-Type"] == "audio/x-wav"
    assert again.headers["X-Sample-Rate"] == "16000"
    assert again.headers["ETag"] != hit.headers["ETag"]


# -- the circuit breaker around every call ----------------------------------------------------


def stop(server: EmbeddedValkey) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


async def test_every_store_call_is_refused_while_the_breaker_is_open(
    private_valkey: EmbeddedValkey,
) -> None:
    redis = open_redis(private_valkey.url, socket_timeout=0.2, connect_timeout=0.2)
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=3600)
    service = AudioCacheService(redis, prefix="guarded", breaker=breaker)
    try:
        await service.put(KEY, AUDIO, media_type="audio/wav", ttl_seconds=60, labels=LABELS)
        assert await service.get(CacheKey("00" * 32)) is None  # a miss waits to be flushed
        stop(private_valkey)
        with pytest.raises(Exception) as first:  # the store really is out of reach
            await service.totals()
        assert not isinstance(first.value, CacheUnavailable)
        assert breaker.state is BreakerState.OPEN
        # Each is refused before touching the store: a call that reached it would time
        # out instead (the server is stopped).
        calls: dict[str, Callable[[], Any]] = {
            "fetch": lambda: service.fetch(KEY),
            "get": lambda: service.get(KEY),
            "fetch_fresh": lambda: service.fetch_fresh(KEY),
            "put": lambda: service.put(
                KEY, AUDIO, media_type="audio/wav", ttl_seconds=60, labels=LABELS
            ),
            "remove": lambda: service.remove([KEY]),
            "delete": lambda: service.delete(KEY),
            "purge": lambda: service.purge(),
            "purge_matching": lambda: service.purge_matching({"voice": "alloy"}),
            "flush_counters": lambda: service.flush_counters(),
            "sweep": lambda: service.sweep(),
            "totals": lambda: service.totals(),
            "repair": lambda: service.repair(),
            "info": lambda: service.info(KEY),
            "ttl_ms": lambda: service.ttl_ms(KEY),
            "records": lambda: service.records(0),
            "index_page": lambda: service.index_page(0),
            "hit_counts": lambda: service.hit_counts(shard_of(KEY), [KEY.hex]),
        }
        for name, call in calls.items():
            with pytest.raises(CacheUnavailable, match="circuit open"):
                await call()
            assert breaker.state is BreakerState.OPEN, name
    finally:
        assert private_valkey.process is not None
        os.kill(private_valkey.process.pid, signal.SIGCONT)
        await service.close_reads()
        await redis.aclose()


async def test_admin_routes_answer_503_without_waiting_while_the_breaker_is_open(
    upstream: Any, private_valkey: EmbeddedValkey, aiohttp_client: Any
) -> None:
    _, url = upstream
    env = {
        "ADMIN_TOKEN": "t0ken",
        "REDIS_SOCKET_TIMEOUT_SECONDS": "0.2",
        "REDIS_CONNECT_TIMEOUT_SECONDS": "0.2",
        "REDIS_BREAKER_RESET_SECONDS": "3600",  # no probe during the test
    }
    settings = load_settings(env=env, overrides={"upstream_url": url})
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(settings, redis_url=private_valkey.url)
    )
    speech = {"model": "tts-1", "voice": "es", "response_format": "wav"}
    auth = {"Authorization": "Bearer t0ken"}
    r = await client.get("/admin/audio-cache/stats", headers=auth)
    assert r.status == 200
    stop(private_valkey)
    try:
        breaker = client.app[SERVICE].breaker
        for i in range(30):  # each pays a socket timeout, fails open, counts a failure
            r = await client.post("/v1/audio/speech", json={**speech, "input": f"t {i}"})
            assert r.status == 200
            await r.read()
            if breaker.is_open:
                break
        assert breaker.is_open
        key = "0" * 64
        for method, path in [
            ("GET", "/admin/audio-cache/stats"),
            ("DELETE", "/admin/audio-cache"),
            ("DELETE", "/admin/audio-cache?tenant=acme"),
            ("GET", f"/admin/audio-cache/entry?key={key}"),
            ("DELETE", f"/admin/audio-cache/entry?key={key}"),
            ("DELETE", "/admin/audio-cache/entries?voice=es"),
            ("POST", "/admin/audio-cache/cleanup?force=true"),
            ("GET", "/admin/audio-cache/prefetch/0123456789abcdef"),
        ]:
            r = await client.request(method, path, headers=auth)
            body = await r.json()
            assert r.status == 503, (method, path, body)
            # Refused by the breaker, not timed out on the stopped server.
            assert "circuit open" in body["error"]["message"], (method, path, body)
    finally:
        assert private_valkey.process is not None
        os.kill(private_valkey.process.pid, signal.SIGCONT)


async def test_a_cancelled_probe_leaves_the_breaker_open_not_stuck() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=1, clock=lambda: now[0])
    breaker.failure()
    guard = StoreGuard(breaker)
    now[0] = 2.0  # time for a probe
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    probe = asyncio.ensure_future(guard(never))
    await asyncio.sleep(0)
    states = [breaker.state]
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    states.append(breaker.state)
    now[0] = 4.0  # the next call probes again
    assert await guard(asyncio.sleep(0, result="up")) == "up"
    states.append(breaker.state)
    assert states == [BreakerState.HALF_OPEN, BreakerState.OPEN, BreakerState.CLOSED]


# -- Lua errors name their file and line -------------------------------------------------------


def line_of(script: str, text: str) -> int:
    """The one line of ``scripts/<script>.lua`` that contains ``text``."""
    lines = [i for i, line in enumerate(read(script).splitlines(), start=1) if text in line]
    assert len(lines) == 1, lines
    return lines[0]


def named_line(exc: BaseException) -> tuple[str, int]:
    found = re.search(r"(\w+\.lua):(\d+)", str(exc))
    assert found, str(exc)
    return found[1], int(found[2])


async def test_a_lua_error_names_the_line_of_its_file(service: AudioCacheService) -> None:
    n = shard_of(KEY)
    await service.redis.hset(service.keyspace.index(n), KEY.hex, "not json")
    decode = ("prelude.lua", line_of("prelude", "cjson.decode(raw)"))
    # In a shared helper, from a script run on its own...
    with pytest.raises(Exception) as raised:
        await service.delete(KEY)
    assert named_line(raised.value) == decode
    # ...and from one queued on a pipeline (the sweep runs shards eight to a round trip).
    await service.redis.zadd(service.keyspace.expiry(n), {KEY.hex: 1})
    with pytest.raises(Exception) as raised:
        await service.sweep()
    assert named_line(raised.value) == decode
    # In a script's own lines.
    put = Lua(service.redis, "put", prelude=True)
    other = CacheKey("77" * 32)
    m = shard_of(other)
    with pytest.raises(Exception) as raised:
        await put(
            keys=[*service.keyspace.shard_keys(m), service.keyspace.entry(other)],
            args=[service.keyspace.selector_prefix(m), other.hex, 1000, 1000, "{broken",
                  service.keyspace.channel(), "b", "x"],
        )  # fmt: skip
    assert named_line(raised.value) == ("put.lua", line_of("put", "cjson.decode(ARGV[5])"))
    # The server answered: a failed command, not a store that is down.
    assert service.breaker.state is BreakerState.CLOSED
