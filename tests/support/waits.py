"""Bounded waits: until something has happened, or fail after a few seconds.

Use these instead of a fixed ``asyncio.sleep`` whenever a test waits for an event (an entry
stored, a message heard, a process ready). A fixed sleep stays only where time itself must
pass (a TTL running out, a timeout under test), with a comment saying so.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.app import PROCESSOR, SERVICE
from proxy.core.keys import CacheKey


async def eventually(
    condition: Callable[[], Any],
    seconds: float = 5.0,
    *,
    interval: float = 0.01,
    what: str = "condition not reached in time",
) -> Any:
    """Until ``condition()`` (a value, or an awaitable of one) is truthy; returns that value.
    Fails with ``what`` after ``seconds``; asks every ``interval`` seconds."""
    deadline = time.monotonic() + seconds
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return held
        if time.monotonic() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(interval)


async def until_stored(client: TestClient[web.Request, web.Application], response: Any) -> None:
    """After a miss said ``stored``: until the entry is in Redis, since the write follows
    the last byte sent to the client."""
    if "stored" not in response.headers.get("Cache-Status", ""):
        return
    key = CacheKey(response.headers["X-Audio-Cache-Key"])
    service = client.app[SERVICE]

    async def present() -> bool:
        return await service.ttl_ms(key) > 0

    await eventually(present, 2.0, what=f"entry {key.hex[:12]} was never stored")


async def until_filled(*clients: TestClient[web.Request, web.Application]) -> None:
    """Until no fill is running in these proxies: every miss so far is stored or refused,
    so what the store holds (or lacks) is final."""
    for client in clients:
        fills = client.app[PROCESSOR].fills
        await eventually(lambda f=fills: f.in_flight == 0, what="a fill never finished")


async def wait_ready(
    session: aiohttp.ClientSession, base: str, proc: Any, seconds: float = 10.0
) -> None:
    """Until ``base``/readyz answers 200; fails at once if the process exits."""

    async def ready() -> bool:
        if proc.returncode is not None:
            err = await proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"proxy exited: {err!r}")
        try:
            async with session.get(base + "/readyz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(ready, seconds, interval=0.05, what="proxy did not become ready")


async def until_entries(
    session: aiohttp.ClientSession, base: str, count: int, headers: dict[str, str] | None = None
) -> None:
    """Until the admin stats at ``base`` count ``count`` entries: for a proxy running as its
    own process, whose store the test cannot see."""

    async def counted() -> bool:
        async with session.get(base + "/admin/audio-cache/stats", headers=headers) as r:
            assert r.status == 200
            return int((await r.json())["entries"]) == count

    await eventually(counted, 2.0, interval=0.02, what=f"the stats never showed {count} entries")


async def until_prefetched(
    client: Any, job: str, headers: dict[str, str], seconds: float = 10.0
) -> dict[str, Any]:
    """A prefetch job's report from the admin API, once the job is done."""

    async def done() -> dict[str, Any] | None:
        response = await client.get(f"/admin/audio-cache/prefetch/{job}", headers=headers)
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body if body["state"] == "done" else None

    report: dict[str, Any] = await eventually(
        done, seconds, interval=0.02, what="prefetch job did not finish in time"
    )
    return report
