"""The hot tier when its Valkey dies or hangs: it serves nothing while its invalidation
channel is down, and comes back after Redis does. A proxy app on a Valkey of the test's own,
which the test kills or stops, and a loopback upstream.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from proxy.store.embedded import EmbeddedValkey
from proxy.store.hot_tier import HotTier
from tests.support.hot_replicas import BOUND, hot_of, make_hot, speak
from tests.support.proxies import ProxyClient, proxy_on
from tests.support.waits import eventually


@pytest.fixture
async def listening(
    upstream: Any, private_valkey: EmbeddedValkey, aiohttp_client: Any
) -> tuple[ProxyClient, HotTier[Any]]:
    """A proxy on the test's own Valkey, its hot tier listening to the invalidations."""
    _, url = upstream
    client = await proxy_on(aiohttp_client, url, private_valkey.url)
    hot = hot_of(client)
    await eventually(lambda: hot.live, 5)
    return client, hot


async def test_serves_nothing_while_redis_is_down_and_comes_back_after(
    listening: tuple[ProxyClient, HotTier[Any]], private_valkey: EmbeddedValkey
) -> None:
    client, hot = listening
    await make_hot(client, "Our pool opens at eight")
    assert private_valkey.process is not None
    private_valkey.process.kill()
    private_valkey.process.wait()
    await eventually(lambda: not hot.live and len(hot) == 0, BOUND + 0.5)
    _, x_cache, _ = await speak(client, "Our pool opens at eight")
    assert x_cache == "MISS"  # from the upstream: nothing cached is trusted meanwhile
    private_valkey.start()
    await eventually(lambda: hot.live, 10)
    await make_hot(client, "Our pool opens at eight")


async def test_a_silent_channel_empties_the_tier_until_it_speaks_again(
    listening: tuple[ProxyClient, HotTier[Any]], private_valkey: EmbeddedValkey
) -> None:
    client, hot = listening
    await make_hot(client, "The bar closes at midnight")
    assert private_valkey.process is not None
    os.kill(private_valkey.process.pid, signal.SIGSTOP)  # hung, not dead: no error, no answer
    try:
        await eventually(lambda: not hot.live, BOUND + 0.5)
        await eventually(lambda: len(hot) == 0, 1.0)
    finally:
        os.kill(private_valkey.process.pid, signal.SIGCONT)
    await eventually(lambda: hot.live, 10)
