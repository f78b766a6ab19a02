"""Redis Sentinel: the proxy finds the master through three real sentinels, and a failover
(SENTINEL FAILOVER) under load costs no client request; hits resume by themselves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.app import SERVICE as STORE
from tests.support.loopback_upstream import fake_wav
from tests.support.proxies import ProxyClient, proxy_on
from tests.support.sentinel import SERVICE, SentinelSet, start_sentinels
from tests.support.speech import SPEECH_PATH, speech_body
from tests.support.waits import eventually, until_filled


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    group = start_sentinels()
    yield group
    group.stop()


async def speak(client: ProxyClient, text: str) -> tuple[int, bytes, str]:
    r = await client.post(SPEECH_PATH, json=speech_body(text, voice="es"))
    return r.status, await r.read(), r.headers.get("X-Cache", "")


def expected(text: str) -> bytes:
    return fake_wav(text, "es", "tts-1|wav|None")


async def test_failover_under_load_fails_no_request_and_hits_resume(
    upstream: Any, sentinels: SentinelSet, aiohttp_client: Any
) -> None:
    _fake, url = upstream
    client = await proxy_on(aiohttp_client, url, sentinels.url, client_auth="none")
    texts = [f"sentinel phrase {i}" for i in range(8)]
    for t in texts:
        assert (await speak(client, t))[:2] == (200, expected(t))
    await until_filled(client)
    for t in texts:
        assert (await speak(client, t))[2] == "HIT"
    sentinels.wait_replica_synced()
    old_master = sentinels.master_port()

    failures: list[Any] = []
    stop = asyncio.Event()

    async def load() -> int:
        sent = 0
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            t = texts[sent % len(texts)]
            status, body, _ = await speak(client, t)
            if (status, body) != (200, expected(t)):
                failures.append((t, status, body[:80]))
            sent += 1
            await asyncio.sleep(0.005)
        return sent

    loader = asyncio.create_task(load())
    await asyncio.sleep(0.3)
    assert sentinels.sentinel().execute_command("SENTINEL", "FAILOVER", SERVICE)
    await eventually(lambda: sentinels.master_port() != old_master, seconds=30, interval=0.2)

    async def hits_again() -> bool:
        status, body, cache = await speak(client, texts[0])
        return status == 200 and body == expected(texts[0]) and cache == "HIT"

    await eventually(hits_again, seconds=30, interval=0.2)
    stop.set()
    sent = await loader
    assert sent > 0 and failures == []
    # New answers are stored on the new master.
    assert (await speak(client, "after the failover"))[:2] == (200, expected("after the failover"))
    await until_filled(client)
    assert (await speak(client, "after the failover"))[2] == "HIT"
    report = await client.app[STORE].repair()
    assert report["entries"] == len(texts) + 1
