"""Compression of stored audio, end to end: real speech from the demo upstream, real Valkey."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from proxy.core.compression import CompressionAdvisor
from proxy.core.keys import CacheKey
from proxy.core.packing import HEADER_SIZE, Codec
from proxy.demo.upstream import SPEECH_CALLS, create_demo_upstream_app
from proxy.store.client import open_redis
from proxy.store.service import AudioCacheService, EntryLabels
from tests.support.proxies import service_of
from tests.support.speech import speech_body
from tests.support.waits import until_filled, until_stored

SENTENCE = "Bienvenido al hotel. El desayuno se sirve de siete a diez en el comedor principal."
SPEECH = speech_body(SENTENCE, voice="es")


def ops(operation: str, result: str) -> float:
    labels = {"operation": operation, "result": result}
    return REGISTRY.get_sample_value("audio_cache_compression_operations_total", labels) or 0.0


def key(name: str) -> CacheKey:
    return CacheKey(hashlib.sha256(name.encode()).hexdigest())


@pytest.fixture
async def demo() -> AsyncIterator[tuple[TestServer, str]]:
    server = TestServer(create_demo_upstream_app(), host="127.0.0.1")
    await server.start_server()
    yield server, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:
    client = open_redis(redis_url)
    yield client
    await client.aclose()


def service(redis: Any, *, threshold: int = 0, codec: Codec = Codec.ZLIB, level: int = 6) -> Any:
    return AudioCacheService(
        redis,
        prefix=f"z{uuid.uuid4().hex[:10]}",
        advisor=CompressionAdvisor(True, threshold_bytes=threshold, min_saving=0.05),
        codec=codec,
        compression_level=level,
    )


async def stored_body(client: Any, hex_key: str) -> bytes:
    svc = service_of(client)
    body: bytes = await svc.redis.hget(svc.keyspace.entry(CacheKey(hex_key)), "b")
    return body


@pytest.mark.parametrize("codec", [None, "zlib", "flac"])  # None: the default, zstd
@pytest.mark.parametrize("response_format", ["wav", "pcm"])
async def test_real_speech_is_stored_compressed_and_served_byte_exact(
    demo: Any, make_proxy: Any, response_format: str, codec: str | None
) -> None:
    server, url = demo
    chosen = {} if codec is None else {"audio_cache_compression_codec": codec}
    client = await make_proxy(url, audio_cache_compression_threshold_kb=10, **chosen)
    codec = codec or "zstd"
    before = ops("compress", "ok"), ops("decompress", "ok")
    first = await client.post(
        "/v1/audio/speech", json={**SPEECH, "response_format": response_format}
    )
    audio = await first.read()
    assert first.headers["Cache-Status"] == "tts-cache; fwd=miss; stored"
    assert len(audio) > 40 * 1024
    hex_key = first.headers["X-Audio-Cache-Key"]
    await until_stored(client, first)

    info = await service_of(client).info(CacheKey(hex_key))
    assert info is not None and info.codec == codec
    assert info.size == len(audio) and info.stored_size < 0.9 * len(audio)
    if codec == "flac":  # what an audio codec is for
        assert info.stored_size < 0.65 * len(audio)
    assert len(await stored_body(client, hex_key)) == info.stored_size

    second = await client.post(
        "/v1/audio/speech", json={**SPEECH, "response_format": response_format}
    )
    assert second.headers["X-Cache"] == "HIT"
    assert await second.read() == audio
    assert server.app[SPEECH_CALLS]["speech"] == 1
    assert (ops("compress", "ok"), ops("decompress", "ok")) == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize("codec", [Codec.ZLIB, Codec.ZSTD])
@pytest.mark.parametrize("level", [1, 6, 9])
async def test_every_codec_and_level_round_trips_through_valkey(
    redis: Any, codec: Codec, level: int
) -> None:
    svc = service(redis, codec=codec, level=level)
    audio = (SENTENCE.encode() + bytes(range(256))) * 500
    result = await svc.put(
        key("a"), audio, media_type="audio/wav", ttl_seconds=60, labels=EntryLabels()
    )
    assert result.codec is codec and result.stored_size < len(audio)
    found = await svc.get(key("a"))
    assert found is not None and found.audio == audio


async def test_threshold_is_strictly_above(redis: Any) -> None:
    audio = bytes(4096)
    at = service(redis, threshold=4096)
    assert (
        await at.put(key("t"), audio, media_type="audio/wav", ttl_seconds=60, labels=EntryLabels())
    ).codec is Codec.NONE
    below = service(redis, threshold=4095)
    assert (
        await below.put(
            key("t"), audio, media_type="audio/wav", ttl_seconds=60, labels=EntryLabels()
        )
    ).codec is Codec.ZLIB


async def test_incompressible_audio_is_stored_plain_and_not_retried(redis: Any) -> None:
    svc = service(redis)
    before_nwi, before_ok = ops("compress", "not_worth_it"), ops("compress", "ok")
    mp3_like = b"ID3\x04\x00" + os.urandom(150_000)
    first = await svc.put(
        key("m1"), mp3_like, media_type="audio/mpeg", ttl_seconds=60, labels=EntryLabels()
    )
    second = await svc.put(
        key("m2"), mp3_like[::-1], media_type="audio/mpeg", ttl_seconds=60, labels=EntryLabels()
    )
    assert first.codec is second.codec is Codec.NONE
    assert first.stored_size == len(mp3_like) + HEADER_SIZE
    assert ops("compress", "not_worth_it") == before_nwi + 1  # the second was not even tried
    assert ops("compress", "ok") == before_ok
    found = await svc.get(key("m2"))
    assert found is not None and found.audio == mp3_like[::-1]
    totals = await svc.totals()
    assert totals["compressed_entries"] == 0


async def test_counters_follow_puts_overwrites_and_deletes(redis: Any) -> None:
    svc = service(redis)
    a, b = bytes(200_000), b"x" * 150_000
    ra = await svc.put(key("a"), a, media_type="audio/wav", ttl_seconds=60, labels=EntryLabels())
    rb = await svc.put(key("b"), b, media_type="audio/wav", ttl_seconds=60, labels=EntryLabels())
    totals = await svc.totals()
    assert totals["compressed_entries"] == 2
    assert totals["compressed_bytes"] == ra.stored_size + rb.stored_size
    assert totals["compressed_original_bytes"] == len(a) + len(b)
    # Overwrite a with audio that does not compress: it leaves the compressed counters.
    await svc.put(
        key("a"),
        os.urandom(120_000),
        media_type="audio/x-raw",
        ttl_seconds=60,
        labels=EntryLabels(),
    )
    await svc.delete(key("b"))
    totals = await svc.totals()
    assert totals["compressed_entries"] == 0
    assert totals["compressed_bytes"] == totals["compressed_original_bytes"] == 0
    assert totals["entries"] == 1


async def test_corrupt_compressed_entry_is_a_miss_deleted_and_counted(
    demo: Any, make_proxy: Any
) -> None:
    server, url = demo
    client = await make_proxy(url, audio_cache_compression_threshold_kb=10)
    first = await client.post("/v1/audio/speech", json=SPEECH)
    audio = await first.read()
    hex_key = first.headers["X-Audio-Cache-Key"]
    await until_stored(client, first)
    svc = service_of(client)
    body = bytearray(await stored_body(client, hex_key))
    body[HEADER_SIZE + len(body) // 3] ^= 0xFF  # one flipped bit pattern inside the payload
    await svc.redis.hset(svc.keyspace.entry(CacheKey(hex_key)), "b", bytes(body))
    corrupt = ops("decompress", "corrupt")

    again = await client.post("/v1/audio/speech", json=SPEECH)
    assert again.headers["X-Cache"] == "MISS"
    assert await again.read() == audio  # synthesized again, never the garbage
    assert ops("decompress", "corrupt") == corrupt + 1
    assert server.app[SPEECH_CALLS]["speech"] == 2
    await until_filled(client)
    totals = await svc.totals()
    assert totals["entries"] == 1  # the bad one deleted, the fresh one stored once
    third = await client.post("/v1/audio/speech", json=SPEECH)
    assert third.headers["X-Cache"] == "HIT" and await third.read() == audio


async def test_ranges_and_etags_refer_to_the_original_audio(demo: Any, make_proxy: Any) -> None:
    _, url = demo
    packed = await make_proxy(url, audio_cache_compression_threshold_kb=10)
    plain = await make_proxy(url, audio_cache_compression_enabled=False)
    audio = await (await packed.post("/v1/audio/speech", json=SPEECH)).read()
    await (await plain.post("/v1/audio/speech", json=SPEECH)).read()
    await until_filled(packed, plain)

    headers = {"Range": "bytes=1000-5999"}
    r1 = await packed.post("/v1/audio/speech", json=SPEECH, headers=headers)
    r2 = await plain.post("/v1/audio/speech", json=SPEECH, headers=headers)
    assert r1.status == r2.status == 206
    assert r1.headers["Content-Range"] == f"bytes 1000-5999/{len(audio)}"
    assert await r1.read() == await r2.read() == audio[1000:6000]
    assert r1.headers["ETag"] == r2.headers["ETag"]
    tail = await packed.post("/v1/audio/speech", json=SPEECH, headers={"Range": "bytes=-100"})
    assert await tail.read() == audio[-100:]
    conditional = await packed.post(
        "/v1/audio/speech", json=SPEECH, headers={"If-None-Match": r2.headers["ETag"]}
    )
    assert conditional.status == 304
