"""``tts-cache-proxy serve --workers N``: N real processes on one port, one embedded store
started once by the parent, and SIGTERM to the parent stops them all gracefully."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from proxy.store.embedded import free_port
from tests.support.loopback_upstream import fake_wav
from tests.support.speech import speech_body
from tests.support.waits import eventually


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def _command(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


async def test_workers_share_port_and_store_and_stop_on_sigterm(
    upstream: tuple[Any, str],
) -> None:
    fake, url = upstream
    port = free_port()
    script = str(Path(sys.executable).with_name("tts-cache-proxy"))
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    parent = await asyncio.create_subprocess_exec(
        script, "serve", "--workers", "2", "--upstream", url, "--port", str(port),
        env={**env, "LOG_LEVEL": "WARNING", "ACCESS_LOG": "false"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        workers: list[int] = []
        while time.monotonic() < deadline:
            workers = [c for c in _children(parent.pid) if "proxy.cli" in _command(c)]
            ready = 0
            for _ in range(8):  # fresh connections land on either worker
                try:
                    connector = aiohttp.TCPConnector(force_close=True)
                    async with (
                        aiohttp.ClientSession(connector=connector) as s,
                        s.get(base + "/readyz") as r,
                    ):
                        ready += r.status == 200
                except aiohttp.ClientConnectionError:
                    pass
            if len(workers) == 2 and ready == 8:
                break
            await asyncio.sleep(0.2)  # (a bounded poll: at most 20 s)
        assert len(workers) == 2, "two worker processes"
        stores = [c for c in _children(parent.pid) if "valkey-server" in _command(c).split()[0]]
        assert len(stores) == 1, "one embedded store, started by the parent"
        body = speech_body("Welcome to the hotel", response_format=None)
        seen = []
        for _ in range(30):
            connector = aiohttp.TCPConnector(force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector) as s,
                s.post(base + "/v1/audio/speech", json=body) as r,
            ):
                assert r.status == 200
                assert await r.read() == fake_wav(
                    "Welcome to the hotel", "alloy", "tts-1|None|None"
                )
                seen.append(r.headers["Cache-Status"])
        assert fake.calls["openai"] == 1, "both workers read the one shared store"
        # One miss went upstream; a request that came while its entry was being written
        # rode on it ("collapsed"); the rest were hits.
        led = [s for s in seen if "fwd=miss" in s and "collapsed" not in s]
        assert len(led) == 1, seen
        assert all("; hit" in s or "collapsed" in s for s in seen[1:]), seen
        # Any worker answers a scrape for all of them. A worker hands its hit path's counts
        # to the shared files at least every audio_cache_stats_flush_seconds (1 s): within
        # that, every scrape agrees with what the clients saw, whichever worker served it.
        hits = sum("; hit" in s for s in seen)

        async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            connector = aiohttp.TCPConnector(force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector) as s,
                s.get(base + "/metrics") as r,
            ):
                return {
                    (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                    for family in text_string_to_metric_families(await r.text())
                    for sample in family.samples
                }

        get_hit = (("operation", "get"), ("result", "hit"))
        before = (await scrape())[("audio_cache_operations_total", get_hit)]
        assert before <= hits
        await asyncio.sleep(1.5)  # past one flush interval of every worker
        for _ in range(6):
            scraped = await scrape()
            assert scraped[("audio_cache_operations_total", get_hit)] == hits
            assert scraped[("audio_cache_size_entries", ())] == 1
        parent.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(parent.wait(), 40)
        assert code == 0
        for pid in workers + stores:
            await eventually(
                lambda p=pid: not _alive(p), 5.0, interval=0.1,
                what=f"process {pid} outlived the parent",
            )  # fmt: skip
    finally:
        if parent.returncode is None:  # the test failed midway: stop everything it started
            parent.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(parent.wait(), 30)
            except TimeoutError:
                parent.kill()
                await parent.wait()
