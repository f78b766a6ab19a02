"""Upstreams that misbehave (hang, reset, stall mid-body), corrupt entries and hostile
request targets, through a real proxy and Valkey: clients always get correct audio or a
clear error, and nothing wrong is stored. (A Valkey killed or hung:
tests/process/test_faults.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from proxy.app import SERVICE
from proxy.core.keys import CacheKey
from tests.support.proxies import ProxyClient, raw_request
from tests.support.servers import served
from tests.support.speech import SPEECH_PATH, speech_body
from tests.support.waits import until_filled


async def speak(client: ProxyClient, text: str) -> tuple[int, bytes, str]:
    r = await client.post(SPEECH_PATH, json=speech_body(text, voice="es"))
    return r.status, await r.read(), r.headers.get("X-Cache", "")


@pytest.fixture
async def bad_upstream() -> AsyncIterator[tuple[dict[str, int], str]]:
    calls = {"n": 0}

    async def hang(request: web.Request) -> web.Response:
        calls["n"] += 1
        await asyncio.sleep(30)  # hangs: far longer than the proxy's timeouts under test
        return web.Response()

    async def reset(request: web.Request) -> web.Response:
        calls["n"] += 1
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    async def stall_mid_body(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        response.content_length = 10_000
        await response.prepare(request)
        await response.write(b"RIFF" + b"\0" * 996)
        await asyncio.sleep(30)  # stalls mid-body: far longer than the read timeout
        return response

    app = web.Application()
    app.router.add_post("/hang/v1/audio/speech", hang)
    app.router.add_post("/reset/v1/audio/speech", reset)
    app.router.add_post("/stall/v1/audio/speech", stall_mid_body)
    async with served(app) as url:
        yield calls, url


@pytest.mark.parametrize(("mode", "status"), [("hang", 504), ("reset", 502)])
async def test_upstream_failures_are_clear_errors_and_never_stored(
    bad_upstream: Any, make_proxy: Any, mode: str, status: int
) -> None:
    calls, base = bad_upstream
    client = await make_proxy(
        f"{base}/{mode}", upstream_read_timeout_seconds=0.3, upstream_total_timeout_seconds=3
    )
    for _ in range(2):
        r = await client.post(SPEECH_PATH, json=speech_body("x", voice="es"))
        assert r.status == status
        error = (await r.json())["error"]
        assert error["status"] == status and "upstream" in error["message"]
    assert calls["n"] == 2  # nothing was stored, so the second request went upstream too


async def test_upstream_stalling_mid_body_is_cut_and_not_stored(
    bad_upstream: Any, make_proxy: Any
) -> None:
    _calls, base = bad_upstream
    client = await make_proxy(f"{base}/stall", upstream_read_timeout_seconds=0.3)
    r = await client.post(SPEECH_PATH, json=speech_body("x", voice="es"))
    assert r.status == 200
    with pytest.raises(Exception):  # noqa: B017 - the connection is closed mid-body
        await r.read()
    await until_filled(client)
    assert (await client.app[SERVICE].totals())["entries"] == 0


async def test_corrupt_entry_is_a_miss_deleted_and_counted(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    service = client.app[SERVICE]
    _, body, _ = await speak(client, "integrity")
    await until_filled(client)
    r = await client.post(SPEECH_PATH, json=speech_body("integrity", voice="es"))
    key = CacheKey(r.headers["X-Audio-Cache-Key"])
    stored = await service.redis.hget(service.keyspace.entry(key), "b")
    flipped = stored[:-1] + bytes([stored[-1] ^ 0xFF])
    await service.redis.hset(service.keyspace.entry(key), "b", flipped)
    status, again, x_cache = await speak(client, "integrity")
    assert (status, again, x_cache) == (200, body, "MISS")
    await until_filled(client)
    totals = await service.totals()
    assert totals["corrupt"] == 1
    assert totals["entries"] == 1  # the fresh answer replaced it
    assert fake.calls["openai"] == 2


async def test_oversized_request_body_is_413_json(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url, max_request_body_kb=4)
    r = await client.post(SPEECH_PATH, json=speech_body("x" * 10_000, voice="es"))
    assert r.status == 413
    assert (await r.json())["error"]["field"] == "body"
    assert fake.calls["openai"] == 0


@pytest.mark.parametrize(
    "target",
    [
        "/other/../../etc/passwd",
        "/other/%2e%2e/%2e%2e/x",
        "/other/%252e%252e/x",
        "//evil.example/x",
    ],
)
async def test_path_tricks_are_refused(upstream: Any, make_proxy: Any, target: str) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    assert client.port is not None
    raw = await raw_request(client.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 400"), raw[:200]
    assert fake.calls["other"] == 0


async def test_absolute_form_and_host_tricks_only_reach_the_upstream(
    upstream: Any, make_proxy: Any
) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    assert client.port is not None
    request = b"GET http://169.254.169.254/other/meta HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
    raw = await raw_request(client.port, request)
    # Either refused, or sent to the configured upstream's /other/meta: never elsewhere.
    assert raw.startswith((b"HTTP/1.1 400", b"HTTP/1.1 200")), raw[:200]
    if raw.startswith(b"HTTP/1.1 200"):
        assert b'"path":"/other/meta"' in raw
        assert fake.calls["other"] == 1


async def test_upstream_key_is_never_echoed(upstream: Any, make_proxy: Any) -> None:
    _fake, url = upstream
    client = await make_proxy(url, env={"UPSTREAM_API_KEY": "sk-very-secret"})
    r = await client.get("/readyz")
    r2 = await client.post(SPEECH_PATH, json=speech_body("x", voice="es"))
    r3 = await client.get("/other/x")
    for resp in (r, r2, r3):
        text = await resp.read()
        assert b"sk-very-secret" not in text
        assert all("sk-very-secret" not in v for v in resp.headers.values())
