"""`serve --loop uvloop` (setting ``event_loop``): a real proxy process on uvloop's event
loop, whose transports and ``create_connection`` differ from asyncio's, answering misses
(the proxy's own upstream client), hits read from Redis (its pipelined reader) and
pass-through requests (aiohttp's client)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.loopback_upstream import LoopbackUpstream, fake_wav
from tests.support.proxies import serve_process
from tests.support.speech import SPEECH_PATH, speech_body

Served = tuple[LoopbackUpstream, str]


@pytest.fixture
async def on_uvloop(upstream: Any, redis_url: str) -> AsyncIterator[Served]:
    fake, url = upstream
    env = {
        "AUDIO_CACHE_KEY_PREFIX": f"uv{uuid.uuid4().hex[:8]}",
        "AUDIO_CACHE_HOT_TIER_MB": "0",  # every hit is read from Redis
    }
    args = ("--upstream", url, "--redis-url", redis_url, "--loop", "uvloop")
    async with serve_process(*args, env=env) as (base, proc):
        assert _loaded(proc.pid, "uvloop"), "the proxy process did not load uvloop"
        yield fake, base


def _loaded(pid: int, library: str) -> bool:
    """Is a file of ``library`` mapped into process ``pid``?"""
    return library in Path(f"/proc/{pid}/maps").read_text()


async def _speak(session: aiohttp.ClientSession, base: str, text: str) -> tuple[int, bytes, str]:
    async with session.post(base + SPEECH_PATH, json=speech_body(text, voice="es")) as r:
        return r.status, await r.read(), r.headers.get("X-Cache", "")


def _expected(text: str) -> bytes:
    return fake_wav(text, "es", "tts-1|wav|None")


async def test_misses_then_hits_from_redis_on_uvloop(on_uvloop: Served) -> None:
    fake, base = on_uvloop
    async with aiohttp.ClientSession() as session:
        # Three misses: the first opens the upstream connection, the others reuse it.
        for text in ("uno", "dos", "tres"):
            assert await _speak(session, base, text) == (200, _expected(text), "MISS")
        for text in ("uno", "dos", "tres"):
            assert await _speak(session, base, text) == (200, _expected(text), "HIT")
    assert fake.calls["openai"] == 3


async def test_a_chunked_upstream_and_a_failing_one_on_uvloop(on_uvloop: Served) -> None:
    fake, base = on_uvloop
    async with aiohttp.ClientSession() as session:
        fake.mode = "chunked"
        assert await _speak(session, base, "a trozos") == (200, _expected("a trozos"), "MISS")
        fake.mode = "error"
        status, body, _ = await _speak(session, base, "falla")
        assert status == 500 and b"boom" in body  # the upstream's own error, passed on
        fake.mode = "ok"
        # The failure was not stored: the next request calls the upstream again.
        assert await _speak(session, base, "falla") == (200, _expected("falla"), "MISS")
        assert await _speak(session, base, "a trozos") == (200, _expected("a trozos"), "HIT")
    assert fake.calls["openai"] == 3


async def test_pass_through_on_uvloop(on_uvloop: Served) -> None:
    fake, base = on_uvloop
    async with aiohttp.ClientSession() as session, session.put(base + "/other/thing") as r:
        assert r.status == 201
        assert r.headers["X-Upstream"] == "yes"
    assert fake.calls["other"] == 1
