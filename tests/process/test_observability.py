"""Two replicas, one of them a real ``tts-cache-proxy serve`` process, report the same cache
size: the gauges are read from the shared Valkey, not from either process's memory."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp

from tests.support.metrics import samples, scrape_text, value
from tests.support.proxies import serve_process, service_of
from tests.support.speech import speech_body
from tests.support.waits import eventually


async def test_two_replicas_report_the_same_size(
    upstream: Any, make_proxy: Any, redis_url: str
) -> None:
    """The second replica is a separate process sharing the Valkey: its gauges must agree."""
    _, url = upstream
    prefix = f"o{uuid.uuid4().hex[:8]}"
    first = await make_proxy(url, prefix=prefix)
    env = {"AUDIO_CACHE_KEY_PREFIX": prefix, "ACCESS_LOG": "false"}
    args = ("--upstream", url, "--redis-url", redis_url)
    async with serve_process(*args, env=env) as (base, _), aiohttp.ClientSession() as session:
        for i in range(3):  # written by the other process
            async with session.post(
                base + "/v1/audio/speech", json=speech_body(f"uno {i}", voice="es")
            ) as r:
                await r.read()
        for i in range(2):  # written by this one
            await (
                await first.post("/v1/audio/speech", json=speech_body(f"dos {i}", voice="es"))
            ).read()

        async def all_stored() -> bool:
            return (await service_of(first).totals())["entries"] == 5

        await eventually(all_stored)
        async with session.get(base + "/metrics") as r:
            theirs = samples(await r.text())
        ours = samples(await scrape_text(first))
    for gauge in ("audio_cache_size_entries", "audio_cache_memory_bytes"):
        assert value(ours, gauge) == value(theirs, gauge) > 0
    assert value(ours, "audio_cache_size_entries") == 5
