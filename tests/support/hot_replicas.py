"""Replicas with live hot tiers, and entries made hot in them, for tests of the hot path."""

from __future__ import annotations

from typing import Any

from proxy.store.hot_tier import HotTier

from .proxies import ProxyClient, ProxyFactory, service_of
from .speech import SPEECH_PATH, speech_body
from .waits import eventually

BOUND = 1.0  # seconds: every replica's hot tier hears a delete within this (the promise)


def hot_of(client: ProxyClient) -> HotTier[Any]:
    hot = service_of(client).hot
    assert hot is not None
    return hot


async def speak(client: ProxyClient, text: str, voice: str = "alloy") -> tuple[bytes, str, str]:
    """One speech request that must succeed: (audio, X-Cache, cache key)."""
    r = await client.post(SPEECH_PATH, json=speech_body(text, voice=voice))
    assert r.status == 200
    return await r.read(), r.headers["X-Cache"], r.headers["X-Audio-Cache-Key"]


async def replicas(
    make_proxy: ProxyFactory, url: str, **settings: Any
) -> tuple[ProxyClient, ProxyClient]:
    """Two replicas sharing one cache, their hot tiers live."""
    a = await make_proxy(url, prefix=None, **settings)
    prefix = service_of(a).keyspace.prefix
    b = await make_proxy(url, prefix=prefix, **settings)
    for client in (a, b):
        await eventually(lambda c=client: hot_of(c).live, 5)
    return a, b


async def make_hot(client: ProxyClient, text: str, voice: str = "alloy") -> str:
    """Ask until ``client`` answers ``text`` from its hot tier; returns the key. (Its own
    store of the miss is published too, and may evict a first admission when it lands.)"""
    hot = hot_of(client)
    generation = hot.generation
    missed = False
    for _ in range(8):
        _, x_cache, key = await speak(client, text, voice)
        missed = missed or x_cache == "MISS"
        if key in hot:
            break
    if missed:  # the publication of the miss's store reaches this tier (any message counts)
        await eventually(lambda: hot.generation != generation, what="the store was not heard")
    # A publication still on its way (on a cluster, from another master) may drop a first
    # admission once more: ask again, a bounded number of times, until a hot hit is seen.
    for _ in range(8):
        _, _, key = await speak(client, text, voice)
        hits = hot.stats.hits
        await speak(client, text, voice)
        if key in hot and hot.stats.hits == hits + 1:
            return key
    raise AssertionError(f"{text!r} was never served from the hot tier")


async def hot_proxy(make_proxy: ProxyFactory, url: str, text: str) -> ProxyClient:
    """A replica (with a port, for raw HTTP) whose hot tier holds ``text``."""
    client, _ = await replicas(make_proxy, url)
    assert client.port is not None
    await make_hot(client, text)
    return client
