"""The fixtures every kind of test shares: real Valkey servers from the pip-installed binary
(one for the session, a private one, a 3-master cluster), a loopback upstream and a proxy
in front of them. Plain helpers are in tests/support/."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from proxy.app import create_app
from proxy.config.settings import load_settings
from proxy.observability.access_log import runner_options
from proxy.store.embedded import EmbeddedValkey, free_port
from tests.support.cluster import ValkeyCluster, start_cluster
from tests.support.loopback_upstream import LoopbackUpstream
from tests.support.proxies import ProxyClient, ProxyFactory
from tests.support.servers import ProxyTestServer, served


@pytest.fixture(scope="session")
def valkey() -> Iterator[EmbeddedValkey]:
    """One real Valkey server for the whole session; tests isolate by key prefix."""
    server = EmbeddedValkey(port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(valkey: EmbeddedValkey) -> str:
    return valkey.url


@pytest.fixture
def private_valkey() -> Iterator[EmbeddedValkey]:
    """A Valkey of this test's own, which the test may kill, stop (SIGSTOP) or fill."""
    server = EmbeddedValkey(port=free_port())
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[ValkeyCluster]:
    """One real 3-master Valkey cluster for the session, started when a test first asks;
    tests isolate by key prefix."""
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[LoopbackUpstream, str]]:
    fake = LoopbackUpstream()
    async with served(fake.app()) as url:
        yield fake, url


@pytest.fixture
def make_proxy(redis_url: str, aiohttp_client: Any) -> ProxyFactory:
    """A real proxy app on loopback, on its own key prefix in the shared Valkey."""

    async def make(
        upstream_url: str,
        *,
        prefix: str | None = None,
        env: dict[str, str] | None = None,
        **settings: Any,
    ) -> ProxyClient:
        env = {
            "AUDIO_CACHE_STATS_FLUSH_SECONDS": "0.05",
            "AUDIO_CACHE_SWEEP_INTERVAL_SECONDS": "0.1",
            **(env or {}),
        }
        overrides = {
            "upstream_url": upstream_url,
            "audio_cache_key_prefix": prefix or f"t{uuid.uuid4().hex[:10]}",
            **settings,
        }
        loaded = load_settings(env=env, overrides=overrides)
        app = create_app(loaded, redis_url=redis_url)
        # Served like `serve` serves it: same access log and connection limits.
        options = runner_options(
            access_log=loaded.access_log, idle_timeout=loaded.client_idle_timeout_seconds
        )
        server = ProxyTestServer(app, host="127.0.0.1")
        await server.start_server(**options)  # (TestServer ignores constructor options)
        client: ProxyClient = await aiohttp_client(server)
        return client

    return make
