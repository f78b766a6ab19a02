"""Faults against real processes: a Valkey killed, hung or full; upstreams that misbehave;
hostile request targets. Clients always get correct audio or a clear error."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.app import SERVICE
from proxy.core.keys import CacheKey
from proxy.observability.metrics import METRICS
from proxy.store.client import open_redis
from proxy.store.embedded import EmbeddedValkey, free_port
from tests.support.loopback_upstream import fake_wav
from tests.support.proxies import proxy_on, raw_request

SPEECH = {"model": "tts-1", "voice": "es", "response_format": "wav"}


def expected(text: str) -> bytes:
    return fake_wav(text, "es", "tts-1|wav|None")


async def speak(
    client: TestClient[web.Request, web.Application], text: str
) -> tuple[int, bytes, str]:
    r = await client.post("/v1/audio/speech", json={**SPEECH, "input": text})
    return r.status, await r.read(), r.headers.get("X-Cache", "")


async def test_valkey_killed_under_load_then_restarted(
    upstream: Any, private_valkey: EmbeddedValkey, aiohttp_client: Any
) -> None:
    _fake, url = upstream
    client = await proxy_on(aiohttp_client, url, private_valkey.url)
    texts = [f"phrase {i}" for i in range(10)]
    for t in texts:
        await speak(client, t)
    await asyncio.sleep(0.05)
    results: list[tuple[int, bytes, str, str]] = []
    deadline = time.monotonic() + 15
    for i in range(300):
        if time.monotonic() > deadline:
            break
        if i == 100:
            assert private_valkey.process is not None
            private_valkey.process.kill()  # kill -9 under load
            private_valkey.process.wait()
        text = texts[i % len(texts)]
        status, body, x_cache = await speak(client, text)
        results.append((status, body, x_cache, text))
    assert len(results) >= 200
    assert all(status == 200 for status, *_ in results)
    assert all(body == expected(text) for _, body, _, text in results)  # never wrong audio
    after_kill = [x for _, _, x, _ in results[100:]]
    # With the store dead everything goes upstream, once the proxy has noticed: before that
    # (milliseconds, and never more than the hot tier's one-second liveness) the hot tier
    # may still answer, which is safe: with Redis dead nobody can delete anything.
    noticed = after_kill.index("MISS")
    assert "HIT" not in after_kill[noticed:]
    # Requests while the breaker is open must not wait on Redis timeouts.
    t0 = time.perf_counter()
    for t in texts:
        await speak(client, t)
    assert (time.perf_counter() - t0) / len(texts) < 0.15
    # Restart: the cache recovers by itself once the breaker probes again.
    private_valkey.start()
    recovered = False
    for _ in range(60):
        await asyncio.sleep(0.1)
        await speak(client, "after restart")
        _, _, x_cache = await speak(client, "after restart")
        if x_cache == "HIT":
            recovered = True
            break
    assert recovered
    ready = await client.get("/readyz")
    assert ready.status == 200, await ready.text()


async def test_pooled_connections_survive_a_valkey_restart(
    private_valkey: EmbeddedValkey,
) -> None:
    # Every pooled connection is dead after a restart; the first command on each must
    # still succeed (writes, locks and /readyz all go through this pool).
    client = open_redis(private_valkey.url)
    try:
        await asyncio.gather(*(client.ping() for _ in range(20)))
        assert private_valkey.process is not None
        private_valkey.process.kill()
        private_valkey.process.wait()
        private_valkey.start()
        assert all(await asyncio.gather(*(client.ping() for _ in range(20))))
    finally:
        await client.aclose()


async def test_hung_valkey_costs_a_timeout_then_nothing(
    upstream: Any, private_valkey: EmbeddedValkey, aiohttp_client: Any
) -> None:
    _, url = upstream
    client = await proxy_on(aiohttp_client, url, private_valkey.url)
    await speak(client, "warm")
    assert private_valkey.process is not None
    os.kill(private_valkey.process.pid, signal.SIGSTOP)
    try:
        opened_before = METRICS.fail_open._value.get()
        breaker = client.app[SERVICE].breaker
        # The first few pay the 0.2 s socket timeout (or what is left of it) and fail open.
        for i in range(20):
            status, body, _ = await speak(client, f"hung {i}")
            assert status == 200 and body == expected(f"hung {i}")
            if breaker.is_open:
                break
        assert breaker.is_open, "store timeouts open the circuit breaker"
        # Once it is open (for 0.5 s), no request waits for the store at all.
        durations = []
        for i in range(10):
            t0 = time.perf_counter()
            status, body, _ = await speak(client, f"open {i}")
            durations.append(time.perf_counter() - t0)
            assert status == 200 and body == expected(f"open {i}")
        assert max(durations) < 0.1
        assert METRICS.fail_open._value.get() > opened_before
        ready = await client.get("/readyz")
        assert ready.status == 503
        assert "redis" in await ready.text()
    finally:
        os.kill(private_valkey.process.pid, signal.SIGCONT)


async def test_full_valkey_rejects_writes_and_clients_still_get_audio(
    upstream: Any, aiohttp_client: Any
) -> None:
    _fake, url = upstream
    with EmbeddedValkey(
        port=free_port(), extra_args=("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    ) as store:
        client = await proxy_on(aiohttp_client, url, store.url)
        service = client.app[SERVICE]
        for i in range(200):  # fill Valkey to its limit behind the proxy's back
            try:
                await service.redis.set(f"filler:{i}", os.urandom(64 * 1024))
            except Exception:
                break
        # Now full: pin the limit below what is used, so every write is rejected with OOM.
        await service.redis.config_set("maxmemory", "1mb")
        with pytest.raises(Exception, match="maxmemory"):
            await service.redis.set("probe", "x")
        for i in range(5):
            status, body, _ = await speak(client, f"full {i}")
            assert status == 200 and body == expected(f"full {i}")
        await asyncio.sleep(0.05)
        # Whatever Redis accepted is exact and correct: no counter drift, no wrong audio.
        await service.redis.config_set("maxmemory", "0")
        report = await service.repair()
        assert report["corrected"] == {} and report["ghost_records_removed"] == 0
        for i in range(5):
            status, body, _ = await speak(client, f"full {i}")
            assert status == 200 and body == expected(f"full {i}")


@pytest.fixture
async def bad_upstream() -> AsyncIterator[tuple[dict[str, int], str]]:
    calls = {"n": 0}

    async def hang(request: web.Request) -> web.Response:
        calls["n"] += 1
        await asyncio.sleep(30)
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
        await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_post("/hang/v1/audio/speech", hang)
    app.router.add_post("/reset/v1/audio/speech", reset)
    app.router.add_post("/stall/v1/audio/speech", stall_mid_body)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield calls, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.mark.parametrize(("mode", "status"), [("hang", 504), ("reset", 502)])
async def test_upstream_failures_are_clear_errors_and_never_stored(
    bad_upstream: Any, make_proxy: Any, mode: str, status: int
) -> None:
    calls, base = bad_upstream
    client = await make_proxy(
        f"{base}/{mode}", upstream_read_timeout_seconds=0.3, upstream_total_timeout_seconds=3
    )
    for _ in range(2):
        r = await client.post("/v1/audio/speech", json={**SPEECH, "input": "x"})
        assert r.status == status
        error = (await r.json())["error"]
        assert error["status"] == status and "upstream" in error["message"]
    assert calls["n"] == 2  # nothing was stored, so the second request went upstream too


async def test_upstream_stalling_mid_body_is_cut_and_not_stored(
    bad_upstream: Any, make_proxy: Any
) -> None:
    _calls, base = bad_upstream
    client = await make_proxy(f"{base}/stall", upstream_read_timeout_seconds=0.3)
    r = await client.post("/v1/audio/speech", json={**SPEECH, "input": "x"})
    assert r.status == 200
    with pytest.raises(Exception):  # noqa: B017 - the connection is closed mid-body
        await r.read()
    await asyncio.sleep(0.05)
    assert (await client.app[SERVICE].totals())["entries"] == 0


async def test_corrupt_entry_is_a_miss_deleted_and_counted(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    service = client.app[SERVICE]
    _, body, _ = await speak(client, "integrity")
    await asyncio.sleep(0.05)
    r = await client.post("/v1/audio/speech", json={**SPEECH, "input": "integrity"})
    key = CacheKey(r.headers["X-Audio-Cache-Key"])
    stored = await service.redis.hget(service.keyspace.entry(key), "b")
    flipped = stored[:-1] + bytes([stored[-1] ^ 0xFF])
    await service.redis.hset(service.keyspace.entry(key), "b", flipped)
    status, again, x_cache = await speak(client, "integrity")
    assert (status, again, x_cache) == (200, body, "MISS")
    await asyncio.sleep(0.05)
    totals = await service.totals()
    assert totals["corrupt"] == 1
    assert totals["entries"] == 1  # the fresh answer replaced it
    assert fake.calls["openai"] == 2


async def test_oversized_request_body_is_413_json(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(url, max_request_body_kb=4)
    r = await client.post("/v1/audio/speech", json={**SPEECH, "input": "x" * 10_000})
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
    r2 = await client.post("/v1/audio/speech", json={**SPEECH, "input": "x"})
    r3 = await client.get("/other/x")
    for resp in (r, r2, r3):
        text = await resp.read()
        assert b"sk-very-secret" not in text
        assert all("sk-very-secret" not in v for v in resp.headers.values())


async def test_supervisor_restarts_a_dead_embedded_valkey() -> None:
    store = EmbeddedValkey()
    store.start()
    supervisor = asyncio.create_task(store.supervise(interval=0.05))
    try:
        assert store.process is not None
        store.process.kill()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if store.restarts and store.alive():
                break
        assert store.restarts == 1 and store.alive()
    finally:
        supervisor.cancel()
        store.stop()
