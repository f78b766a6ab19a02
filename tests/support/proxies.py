"""Ways to run the proxy in a test: in this process on loopback, or as its own process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.app import SERVICE, create_app
from proxy.config.settings import load_settings
from proxy.store.embedded import free_port
from proxy.store.service import AudioCacheService

from .waits import wait_ready

ProxyClient = TestClient[web.Request, web.Application]
ProxyFactory = Callable[..., Awaitable[ProxyClient]]  # the ``make_proxy`` fixture


def service_of(client: ProxyClient) -> AudioCacheService:
    return client.app[SERVICE]


async def proxy_on(
    aiohttp_client: Any, upstream_url: str, redis_url: str, **settings: Any
) -> ProxyClient:
    """A proxy on a Valkey of the test's own, with short store timeouts so that a dead or
    hung store is noticed quickly."""
    env = {
        "AUDIO_CACHE_STATS_FLUSH_SECONDS": "0.05",
        "AUDIO_CACHE_SWEEP_INTERVAL_SECONDS": "0.1",
        "REDIS_SOCKET_TIMEOUT_SECONDS": "0.2",
        "REDIS_CONNECT_TIMEOUT_SECONDS": "0.2",
        "REDIS_BREAKER_RESET_SECONDS": "0.5",
    }
    overrides = {
        "upstream_url": upstream_url,
        "audio_cache_key_prefix": f"f{uuid.uuid4().hex[:8]}",
        **settings,
    }
    app = create_app(load_settings(env=env, overrides=overrides), redis_url=redis_url)
    client: ProxyClient = await aiohttp_client(app)
    return client


async def raw_request(port: int, request: bytes) -> bytes:
    """Send ``request`` as given on a new connection to 127.0.0.1:``port``; the reply's
    first bytes (up to 64 KB)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return data


@contextlib.asynccontextmanager
async def serve_process(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, Any]]:
    """A real ``tts-cache-proxy serve`` process on a free port: (base URL, process).
    Stopped with SIGTERM on exit."""
    port = free_port()
    # A file, not a pipe: a busy proxy's log lines would fill a pipe nobody reads.
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.cli", "serve", "--port", str(port), *args,
            env={**os.environ, **(env or {})}, stderr=log,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                try:
                    await wait_ready(session, base, proc)
                except AssertionError:
                    log.seek(0)
                    raise AssertionError(f"proxy not ready: {log.read()[-2000:]!r}") from None
            yield base, proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 30)
