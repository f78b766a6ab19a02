"""A Valkey killed, hung or full behind a proxy, and one that restarts: real server processes
killed (SIGKILL), stopped (SIGSTOP) or filled by the test. Clients always get correct audio
or a clear error. (Misbehaving upstreams and hostile requests: tests/integration/test_faults.py.)"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from proxy.app import SERVICE
from proxy.core.breaker import BreakerState
from proxy.observability.metrics import METRICS
from proxy.store.client import open_redis
from proxy.store.embedded import EmbeddedValkey, free_port
from tests.support.loopback_upstream import fake_wav
from tests.support.proxies import ProxyClient, proxy_on
from tests.support.speech import SPEECH_PATH, speech_body
from tests.support.waits import eventually, until_filled


def expected(text: str) -> bytes:
    return fake_wav(text, "es", "tts-1|wav|None")


async def speak(client: ProxyClient, text: str) -> tuple[int, bytes, str]:
    r = await client.post(SPEECH_PATH, json=speech_body(text, voice="es"))
    return r.status, await r.read(), r.headers.get("X-Cache", "")


async def test_valkey_killed_under_load_then_restarted(
    upstream: Any, private_valkey: EmbeddedValkey, aiohttp_client: Any
) -> None:
    _fake, url = upstream
    client = await proxy_on(aiohttp_client, url, private_valkey.url)
    texts = [f"phrase {i}" for i in range(10)]
    for t in texts:
        await speak(client, t)
    await until_filled(client)
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

    async def recovered() -> bool:
        await speak(client, "after restart")
        _, _, x_cache = await speak(client, "after restart")
        return x_cache == "HIT"

    # Asked every 0.1 s, as a client would; the breaker lets a probe through after 0.5 s.
    await eventually(recovered, 10, interval=0.1, what="the cache did not recover")
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
    # The breaker stays open for a minute here: with the usual 0.5 s, a loaded machine could
    # reach the half-open probe (one more 0.2 s timeout) inside the loop below.
    client = await proxy_on(aiohttp_client, url, private_valkey.url, redis_breaker_reset_seconds=60)
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
        await asyncio.sleep(0.3)  # calls sent before it opened have all timed out by now
        # Once it is open, no request sends the store anything: every call is refused at
        # once (counted here), so none can wait for a timeout.
        allow = breaker.allow
        let_through = 0

        def counting_allow() -> bool:
            nonlocal let_through
            allowed = allow()
            let_through += allowed
            return allowed

        breaker.allow = counting_allow  # type: ignore[method-assign]
        for i in range(10):
            status, body, x_cache = await speak(client, f"open {i}")
            assert status == 200 and body == expected(f"open {i}")
            assert x_cache == "MISS"
        await asyncio.sleep(0.3)  # the fills' background work (stores, verdicts) too
        assert let_through == 0
        assert breaker.state is BreakerState.OPEN
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
        await until_filled(client)
        # Whatever Redis accepted is exact and correct: no counter drift, no wrong audio.
        await service.redis.config_set("maxmemory", "0")
        report = await service.repair()
        assert report["corrected"] == {} and report["ghost_records_removed"] == 0
        for i in range(5):
            status, body, _ = await speak(client, f"full {i}")
            assert status == 200 and body == expected(f"full {i}")


async def test_supervisor_restarts_a_dead_embedded_valkey() -> None:
    store = EmbeddedValkey()
    store.start()
    supervisor = asyncio.create_task(store.supervise(interval=0.05))
    try:
        assert store.process is not None
        store.process.kill()
        await eventually(lambda: store.restarts and store.alive(), 5, interval=0.05)
        assert store.restarts == 1 and store.alive()
    finally:
        supervisor.cancel()
        store.stop()
