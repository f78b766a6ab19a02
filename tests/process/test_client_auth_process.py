"""Client authentication of a real `tts-cache-proxy serve` process: SIGHUP reloads the keys
file, and `client_auth: none` with an injected upstream key refuses a non-loopback host
unless allow_anonymous_clients says a gateway in front authenticates."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.core.clients import digest_of
from proxy.store.embedded import free_port
from tests.support.keyed_upstream import bearer, keyed_upstream
from tests.support.proxies import serve_process
from tests.support.speech import SPEECH_PATH, speech_body
from tests.support.waits import eventually

UPSTREAM_KEY = "sk-upstream-account"


def write_keys(path: Path, key: str) -> None:
    # Every key's entry is the same size, so a swap leaves the file's size unchanged.
    entry = {"sha256": digest_of(key), "name": "front-desk"}
    path.write_text(yaml.safe_dump({"keys": [entry]}), encoding="utf-8")


async def status_with(session: aiohttp.ClientSession, base: str, key: str | None) -> int:
    headers = bearer(key) if key else {}
    async with session.post(base + SPEECH_PATH, json=speech_body("Hola"), headers=headers) as r:
        await r.read()
        return r.status


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_reloads_the_keys_file(tmp_path: Path, redis_url: str, workers: int) -> None:
    path = tmp_path / "keys.yaml"
    write_keys(path, "sk-old-1")
    async with keyed_upstream({UPSTREAM_KEY}) as (fake, url):
        env = {
            "CLIENT_AUTH": "keys",
            "CLIENT_KEYS_FILE": str(path),
            "UPSTREAM_API_KEY": UPSTREAM_KEY,
            "AUDIO_CACHE_KEY_PREFIX": f"ka{uuid.uuid4().hex[:8]}",
        }
        args = ("--upstream", url, "--redis-url", redis_url, "--workers", str(workers))
        async with serve_process(*args, env=env) as (base, proc), aiohttp.ClientSession() as s:
            assert await status_with(s, base, None) == 401
            for _ in range(4 * workers):  # each worker is up, whichever a connection reaches
                async with aiohttp.ClientSession() as fresh:
                    assert await status_with(fresh, base, "sk-old-1") == 200
            # Swap the key without the file's stamp (size, mtime) changing: only a SIGHUP
            # makes the process read it again.
            before = path.stat()
            write_keys(path, "sk-new-1")
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            assert path.stat().st_size == before.st_size
            # Longer than the file watcher's period (1 s): time itself must pass here.
            await asyncio.sleep(2.5)
            assert await status_with(s, base, "sk-new-1") == 401
            proc.send_signal(signal.SIGHUP)

            async def reloaded() -> bool:
                return await status_with(s, base, "sk-new-1") == 200

            await eventually(reloaded, 5.0, interval=0.1, what="SIGHUP did not reload the keys")
            for _ in range(4 * workers):  # each worker, whichever the connection reaches
                async with aiohttp.ClientSession() as fresh:
                    assert await status_with(fresh, base, "sk-old-1") == 401
                    assert await status_with(fresh, base, "sk-new-1") == 200
            assert proc.returncode is None  # SIGHUP did not end the process
        assert fake.seen and all(h["Authorization"] == f"Bearer {UPSTREAM_KEY}" for h in fake.seen)


async def _serve_exit(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.cli", "serve", *args,
        env={**os.environ, **env}, stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_anonymous_clients_on_a_public_host_need_consent(redis_url: str) -> None:
    port = str(free_port())
    env: dict[str, Any] = {"UPSTREAM_API_KEY": UPSTREAM_KEY, "CLIENT_AUTH": "none"}
    args = ("--host", "0.0.0.0", "--port", port, "--upstream", "http://127.0.0.1:9")
    code, err = await _serve_exit(env, *args, "--redis-url", redis_url)
    assert code != 0
    assert "allow_anonymous_clients" in err and "0.0.0.0" in err
    # auto resolves to none with an injected key and no keys file: refused the same way
    code, err = await _serve_exit({"UPSTREAM_API_KEY": UPSTREAM_KEY}, *args)
    assert code != 0 and "allow_anonymous_clients" in err


async def test_anonymous_clients_on_a_public_host_start_with_consent(redis_url: str) -> None:
    env = {
        "UPSTREAM_API_KEY": UPSTREAM_KEY,
        "CLIENT_AUTH": "none",
        "ALLOW_ANONYMOUS_CLIENTS": "true",
        "AUDIO_CACHE_KEY_PREFIX": f"kn{uuid.uuid4().hex[:8]}",
    }
    args = ("--host", "0.0.0.0", "--upstream", "http://127.0.0.1:9", "--redis-url", redis_url)
    # serve_process waits for /readyz on 127.0.0.1 and stops the process at once.
    async with serve_process(*args, env=env) as (_, proc):
        assert proc.returncode is None
