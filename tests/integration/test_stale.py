"""Stale-if-error: an expired entry kept for a grace period answers when the upstream fails."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.core.keys import CacheKey
from tests.support.loopback_upstream import fake_wav
from tests.support.proxies import service_of
from tests.support.speech import speech_body
from tests.support.waits import eventually, until_filled

SPEECH = speech_body("La piscina cierra a las nueve", voice="es", response_format=None)
AUDIO = fake_wav(SPEECH["input"], "es", "tts-1|None|None")
FLASH = {"X-Audio-Cache-Content-Type": "flash"}  # a content type whose TTL is 1 s


async def speak(client: Any) -> tuple[int, dict[str, str], bytes]:
    r = await client.post("/v1/audio/speech", json=SPEECH, headers=FLASH)
    return r.status, dict(r.headers), bytes(await r.read())


async def emptied(service: Any) -> Any:
    """The totals once the sweeper has accounted for every expired key (bounded wait)."""

    async def no_entries() -> bool:
        return int((await service.totals())["entries"]) == 0

    await eventually(no_entries, 4.0)
    return await service.totals()


async def proxy(make_proxy: Any, url: str, grace: int) -> Any:
    return await make_proxy(
        url,
        audio_cache_content_type_ttls={"flash": 1},
        stale_if_error_seconds=grace,
    )


async def test_upstream_failure_is_answered_with_the_stale_copy(
    upstream: Any, make_proxy: Any
) -> None:
    fake, url = upstream
    client = await proxy(make_proxy, url, grace=60)
    status, headers, body = await speak(client)
    assert headers["Cache-Status"] == "tts-cache; fwd=miss; stored" and body == AUDIO
    key = CacheKey(headers["X-Audio-Cache-Key"])
    await asyncio.sleep(1.1)  # past its TTL, inside the grace period
    service = service_of(client)
    assert await service.ttl_ms(key) == 0  # not fresh: prefetch and lookups see it as due
    assert (await service.totals())["entries"] == 1  # still stored, still counted

    fake.mode = "error"
    status, headers, body = await speak(client)
    assert status == 200 and body == AUDIO
    assert headers["X-Cache"] == "STALE"
    assert headers["Cache-Status"] == (
        "tts-cache; fwd=stale; fwd-status=500; detail=stale-if-error"
    )
    assert headers["Cache-Control"] == "max-age=0"
    assert fake.calls["openai"] == 2  # the upstream was asked first

    fake.mode = "ok"  # back: the stale copy is replaced, then hits are fresh again
    await until_filled(client)  # (a request now would join the failed fill still reading)
    status, headers, body = await speak(client)
    assert headers["Cache-Status"] == "tts-cache; fwd=miss; stored" and body == AUDIO
    await until_filled(client)
    status, headers, body = await speak(client)
    assert headers["X-Cache"] == "HIT" and fake.calls["openai"] == 3


async def test_without_a_grace_period_the_error_passes_through(
    upstream: Any, make_proxy: Any
) -> None:
    fake, url = upstream
    client = await proxy(make_proxy, url, grace=0)
    await speak(client)
    await asyncio.sleep(1.1)  # past its 1 s TTL
    totals = await emptied(service_of(client))  # gone with its TTL
    assert totals["entries"] == 0
    fake.mode = "error"
    status, headers, _ = await speak(client)
    assert status == 500 and headers["X-Cache"] == "MISS"


async def test_a_stale_copy_is_never_a_hit_even_from_the_hot_tier(
    upstream: Any, make_proxy: Any
) -> None:
    fake, url = upstream
    client = await proxy(make_proxy, url, grace=60)
    for _ in range(4):  # stored, then hits: admitted to the hot tier
        await speak(client)
        await until_filled(client)
    assert fake.calls["openai"] == 1
    await asyncio.sleep(1.1)  # past its 1 s TTL, inside the grace period
    _, headers, body = await speak(client)  # upstream fine: a fresh miss
    assert headers["Cache-Status"] == "tts-cache; fwd=miss; stored" and body == AUDIO
    assert fake.calls["openai"] == 2


async def test_stale_copies_leave_when_the_grace_period_ends(
    upstream: Any, make_proxy: Any
) -> None:
    _, url = upstream
    client = await proxy(make_proxy, url, grace=1)
    await speak(client)
    service = service_of(client)
    await asyncio.sleep(1.1)  # past its 1 s TTL, inside the 1 s grace period
    assert (await service.totals())["entries"] == 1  # stale, kept
    totals = await emptied(service)
    assert totals["entries"] == 0 and totals["bytes"] == 0
