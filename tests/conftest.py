"""Real parts for the tests: a Valkey server from the pip-installed binary, loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.app import SERVICE, create_app
from proxy.config.settings import load_settings
from proxy.core.keys import CacheKey
from proxy.observability.access_log import runner_options
from proxy.store.embedded import EmbeddedValkey, free_port
from proxy.store.service import AudioCacheService


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


def fake_wav(text: str, voice: str = "", extra: str = "") -> bytes:
    """Deterministic audio-looking bytes for a request: a RIFF header and a body."""
    seed = f"{text}|{voice}|{extra}".encode()
    body = (seed * (4000 // max(len(seed), 1) + 1))[:4000]
    return b"RIFF" + len(body).to_bytes(4, "little") + b"WAVEfmt " + body


class LoopbackUpstream:
    """A loopback TTS upstream that counts calls and can be told to misbehave."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.mode = "ok"
        self.extra_headers: dict[str, str] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/audio/speech", self.openai)
        app.router.add_post("/v1/text-to-speech/{voice_id}", self.elevenlabs)
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self.elevenlabs)
        app.router.add_get("/process", self.marytts)
        app.router.add_post("/process", self.marytts)
        app.router.add_get("/api/tts", self.coqui)
        app.router.add_route("*", "/other/{tail:.*}", self.other)
        return app

    async def _audio(self, request: web.Request, audio: bytes, route: str) -> web.StreamResponse:
        self.calls[route] += 1
        self.requests.append({"route": route, "headers": dict(request.headers)})
        mode = self.mode
        if mode == "error":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if mode == "html":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if mode == "empty":
            return web.Response(body=b"", content_type="audio/wav")
        if mode == "no-store":
            return web.Response(
                body=audio, content_type="audio/wav", headers={"Cache-Control": "no-store"}
            )
        if mode == "truncate":
            response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
            response.content_length = len(audio)
            await response.prepare(request)
            await response.write(audio[: len(audio) // 2])
            assert request.transport is not None
            request.transport.close()
            return response
        response = web.StreamResponse(
            headers={"Content-Type": "audio/wav", "X-Sample-Rate": "22050", **self.extra_headers}
        )
        if mode == "chunked":
            response.enable_chunked_encoding()
        else:
            response.content_length = len(audio)
        await response.prepare(request)
        for i in range(0, len(audio), 1024):
            await response.write(audio[i : i + 1024])
        await response.write_eof()
        return response

    async def openai(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        extra = f"{body.get('model')}|{body.get('response_format')}|{body.get('speed')}"
        return await self._audio(request, fake_wav(body["input"], body["voice"], extra), "openai")

    async def elevenlabs(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        extra = f"{body.get('model_id')}|{request.query.get('output_format')}"
        voice = request.match_info["voice_id"]
        return await self._audio(request, fake_wav(body["text"], voice, extra), "elevenlabs")

    async def marytts(self, request: web.Request) -> web.StreamResponse:
        q = request.query if request.method == "GET" else await request.post()
        audio = fake_wav(str(q["INPUT_TEXT"]), str(q.get("VOICE", "")))
        return await self._audio(request, audio, "marytts")

    async def coqui(self, request: web.Request) -> web.StreamResponse:
        audio = fake_wav(request.query["text"], request.query.get("speaker_id", ""))
        return await self._audio(request, audio, "coqui")

    async def other(self, request: web.Request) -> web.StreamResponse:
        self.calls["other"] += 1
        body = await request.read()
        response = web.StreamResponse(
            status=201 if request.method == "PUT" else 200,
            headers={"Content-Type": "application/json", "X-Upstream": "yes"},
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"method":"' + request.method.encode() + b'",')
        await response.write(b'"path":"' + request.path.encode() + b'","query":"')
        await response.write(request.query_string.encode() + b'","len":')
        await response.write(str(len(body)).encode() + b"}")
        await response.write_eof()
        return response


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[LoopbackUpstream, str]]:
    fake = LoopbackUpstream()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    await server.close()


ProxyFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def make_proxy(
    redis_url: str, aiohttp_client: Any
) -> Callable[..., Awaitable[TestClient[web.Request, web.Application]]]:
    """A real proxy app on loopback, on its own key prefix in the shared Valkey."""

    async def make(
        upstream_url: str,
        *,
        prefix: str | None = None,
        env: dict[str, str] | None = None,
        **settings: Any,
    ) -> TestClient[web.Request, web.Application]:
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
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(**options)  # (TestServer ignores constructor options)
        client: TestClient[web.Request, web.Application] = await aiohttp_client(server)
        return client

    return make


def service_of(client: TestClient[web.Request, web.Application]) -> AudioCacheService:
    return client.app[SERVICE]


async def wait_ready(session: aiohttp.ClientSession, base: str, proc: Any) -> None:
    """Until ``base``/readyz answers 200; fails at once if the process exits."""
    for _ in range(200):
        if proc.returncode is not None:
            err = await proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"proxy exited: {err!r}")
        try:
            async with session.get(base + "/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("proxy did not become ready")


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


async def until_stored(client: TestClient[web.Request, web.Application], response: Any) -> None:
    """After a miss said ``stored``: wait (bounded) until the entry is in Redis, since the
    write follows the last byte sent to the client."""
    if "stored" not in response.headers.get("Cache-Status", ""):
        return
    key = CacheKey(response.headers["X-Audio-Cache-Key"])
    for _ in range(200):  # at most ~2 s
        if await service_of(client).ttl_ms(key) > 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"entry {key.hex[:12]} was never stored")


async def eventually(condition: Callable[[], Any], seconds: float = 5.0) -> None:
    """Until ``condition()`` (a bool, or an awaitable of one) holds; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
