"""Slow, huge and malformed clients against a real `tts-cache-proxy serve` process."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.proxies import serve_process
from tests.support.speech import speech_body


@pytest.fixture
async def served(upstream: Any, redis_url: str) -> AsyncIterator[tuple[Any, int]]:
    fake, url = upstream
    env = {
        "CLIENT_IDLE_TIMEOUT_SECONDS": "0.5",
        "CLIENT_BODY_TIMEOUT_SECONDS": "0.5",
        "AUDIO_CACHE_KEY_PREFIX": f"cl{uuid.uuid4().hex[:8]}",
    }
    async with serve_process("--upstream", url, "--redis-url", redis_url, env=env) as (base, _):
        yield fake, int(base.rsplit(":", 1)[1])


async def _read_all(reader: asyncio.StreamReader, within: float) -> bytes:
    return await asyncio.wait_for(reader.read(), within)


async def test_slow_loris_headers_are_cut_off(served: tuple[Any, int]) -> None:
    _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\n")
    try:
        for i in range(40):  # one header line every 0.1 s, never finishing the request
            await asyncio.sleep(0.1)
            writer.write(f"X-Drip-{i}: a\r\n".encode())
            await writer.drain()
    except ConnectionError:
        pass
    try:
        leftover = await _read_all(reader, 2.0)
    except ConnectionError:
        leftover = b""
    assert leftover == b""  # closed by the server, nothing served
    assert time.monotonic() - started < 3.0
    writer.close()


async def test_slow_body_is_a_408_json(served: tuple[Any, int]) -> None:
    fake, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200\r\n\r\n" + b'{"model": "tts-1", '
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 3.0)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    error = json.loads(body)["error"]
    assert error["field"] == "body" and "did not arrive" in error["message"]
    assert sum(fake.calls.values()) == 0
    writer.close()


async def test_huge_headers_are_refused_without_a_trace(served: tuple[Any, int]) -> None:
    fake, port = served
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{port}/v1/audio/speech",
            json=speech_body("hola", voice="es", response_format=None),
            headers={"X-Huge": "a" * 20_000},
        ) as r:
            text = await r.text()
            assert r.status in (400, 431)
            assert "Traceback" not in text
        # The server is fine afterwards.
        async with session.post(
            f"http://127.0.0.1:{port}/v1/audio/speech",
            json=speech_body("hola", voice="es", response_format=None),
        ) as r:
            assert r.status == 200
    assert fake.calls["openai"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"model": "tts-1", "input": "caf\xe9", "voice": "es"}', "body"),
        (b'{"model": "tts-1", "input": ', "body"),
        (b'{"model": "tts-1", "input": ["a"], "voice": "es"}', "json:input"),
        (b'{"model": "tts-1", "voice": "es"}', "json:input"),
    ],
)
async def test_invalid_utf8_and_malformed_json_name_the_problem(
    served: tuple[Any, int], body: bytes, field: str
) -> None:
    fake, port = served
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/v1/audio/speech",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as r,
    ):
        assert r.status == 400
        error = (await r.json())["error"]
        assert error["field"] == field, error
    assert sum(fake.calls.values()) == 0
