"""Known hits under attack: a hostile client's requests and connections, on a real proxy,
real Valkey and loopback upstreams, spoken to over raw sockets. Each test holds the known
hit to what the full request path would have done with the same bytes."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import os
import signal
import time
import uuid
from typing import Any

import pytest

from proxy.app import PROCESSOR, create_app
from proxy.config.settings import load_settings
from proxy.observability.access_log import runner_options
from proxy.store.embedded import EmbeddedValkey
from tests.support.known import errors, known_of, until_known
from tests.support.proxies import ProxyFactory
from tests.support.raw_http import Answer, exchange, read_answer, speech_request
from tests.support.servers import ProxyTestServer
from tests.support.speech import speech_body
from tests.support.waits import eventually

TEXT = "The ferry leaves at noon."


def connection_tasks() -> list[asyncio.Task[Any]]:
    """The tasks serving connections of aiohttp's (and this path's reads)."""
    names = ("RequestHandler.start", "HitConnection._read", "_handle_request")
    return [t for t in asyncio.all_tasks() if any(n in repr(t.get_coro()) for n in names)]


# -- requests that differ from a learned one ---------------------------------------------------


def _variant(name: str) -> bytes:
    body = json.dumps(speech_body(TEXT)).encode()
    length = f"Content-Length: {len(body)}\r\n"
    plain = "Content-Type: application/json\r\n"
    heads = {
        "http-1.0-keep-alive": (
            f"POST /v1/audio/speech HTTP/1.0\r\nHost: 127.0.0.1\r\n{plain}{length}"
            "Connection: keep-alive\r\n"
        ),
        "header-case": (
            f"POST /v1/audio/speech HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: "
            f"application/json\r\n{length.lower()}"
        ),
        "header-order": f"POST /v1/audio/speech HTTP/1.1\r\n{length}{plain}Host: 127.0.0.1\r\n",
        "duplicate-header": (
            f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n{plain}{plain}{length}"
        ),
        "trailing-space": (
            f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1 \r\n{plain}{length}"
        ),
        "other-host": f"POST /v1/audio/speech HTTP/1.1\r\nHost: example.test\r\n{plain}{length}",
        "absolute-form": (
            f"POST http://127.0.0.1/v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n{plain}{length}"
        ),
        "query": f"POST /v1/audio/speech?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n{plain}{length}",
        "connection-close": (
            f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n{plain}{length}"
            "Connection: close\r\n"
        ),
        "max-age-0": (
            f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n{plain}{length}"
            "Cache-Control: max-age=0\r\n"
        ),
        "expect": (
            f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n{plain}{length}"
            "Expect: 100-continue\r\n"
        ),
        "range": (
            f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n{plain}{length}"
            "Range: bytes=0-9\r\n"
        ),
    }
    if name == "chunked":
        return (
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + plain.encode()
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
    if name == "gzip":
        packed = gzip.compress(body)
        return (
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + plain.encode()
            + f"Content-Encoding: gzip\r\nContent-Length: {len(packed)}\r\n\r\n".encode()
            + packed
        )
    return heads[name].encode() + b"\r\n" + body


VARIANTS = [
    "chunked",
    "gzip",
    "expect",
    "http-1.0-keep-alive",
    "header-case",
    "header-order",
    "duplicate-header",
    "trailing-space",
    "other-host",
    "absolute-form",
    "query",
    "connection-close",
    "max-age-0",
    "range",
]


# What the full path must answer itself, however often it comes.
NEVER_KNOWN = {
    "chunked",
    "gzip",
    "expect",
    "http-1.0-keep-alive",
    "connection-close",
    "max-age-0",
    "range",
}


@pytest.mark.parametrize("variant", VARIANTS)
async def test_a_variant_of_a_known_request_gets_the_full_paths_answer_every_time(
    upstream: Any, make_proxy: ProxyFactory, variant: str
) -> None:
    """Learned or not, each variant's answer is the one the full path gives it (the same
    as with known hits off)."""
    _, url = upstream
    client = await make_proxy(url, client_auth="none")
    reference = await make_proxy(url, client_auth="none", known_hits_enabled=False)
    await until_known(client, speech_request(TEXT))
    request = _variant(variant)
    for proxy in (client, reference):
        await exchange(proxy.port, speech_request(TEXT))  # stored in both
    head_only = False
    answered = known_of(client).answered
    got = [(await _one(client.port, request, head_only))[0] for _ in range(4)]
    if variant in NEVER_KNOWN:
        assert known_of(client).answered == answered
    want = [(await _one(reference.port, request, head_only))[0] for _ in range(4)]
    assert [a.status_line for a in got] == [a.status_line for a in want]
    assert [a.body for a in got] == [a.body for a in want]
    # Each proxy stored its own entry, each at its own second.
    stamped = {"last-modified"}
    assert [_without(a.stable(), stamped) for a in got] == [
        _without(a.stable(), stamped) for a in want
    ]


def _without(headers: dict[str, str], names: set[str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in names}


async def _one(port: int | None, request: bytes, head_only: bool) -> list[Answer]:
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if raw.startswith(b"HTTP/1.1 100 "):  # an interim answer; the answer follows
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = raw[:-4].decode().split("\r\n")
        headers = [(k, v.lstrip()) for k, _, v in (line.partition(":") for line in lines)]
        answer = Answer(status_line, headers, b"")
        length = answer.get("Content-Length")
        if length is not None:
            answer.body = await asyncio.wait_for(reader.readexactly(int(length)), 5)
        else:
            answer.body = await asyncio.wait_for(reader.read(), 5)
        return [answer]
    finally:
        writer.close()


# -- pipelining ---------------------------------------------------------------------------------


async def test_a_known_request_then_an_upgrade_in_one_write(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    client = await make_proxy(url, client_auth="none")
    request = speech_request(TEXT)
    audio = (await until_known(client, request)).body
    upgrade = (
        b"GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(request + upgrade)
        await writer.drain()
        first = await read_answer(reader)
        assert first.status_line == "HTTP/1.1 200 OK" and first.body == audio
        second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert second.startswith(b"HTTP/1.1 "), second  # the upgrade's own answer follows
        assert audio not in second
    finally:
        writer.close()


async def test_a_known_request_then_garbage_in_one_write(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    """The garbage gets aiohttp's 400, after the known request's answer (or instead of it,
    as aiohttp alone does): never two answers, never one out of order."""
    _, url = upstream
    client = await make_proxy(url, client_auth="none")
    reference = await make_proxy(url, client_auth="none", known_hits_enabled=False)
    request = speech_request(TEXT)
    await until_known(client, request)
    await exchange(reference.port, request)
    garbage = b"\x00\x01NOT HTTP\r\n\r\n"
    seen = []
    for proxy in (client, reference):
        assert proxy.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(request + garbage)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)  # aiohttp closes after a 400
        finally:
            writer.close()
        seen.append([line for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")])
    assert seen[0] == seen[1]


async def test_a_known_request_then_one_with_a_huge_body(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    client = await make_proxy(url, client_auth="none")
    request = speech_request(TEXT)
    audio = (await until_known(client, request)).body
    huge = json.dumps(speech_body("x" * 600_000)).encode()
    big = (
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
        + f"\r\nContent-Length: {len(huge)}\r\n\r\n".encode()
        + huge
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(request + big + request)
        await writer.drain()
        first = await read_answer(reader)
        second = await read_answer(reader)
        third = await read_answer(reader)
    finally:
        writer.close()
    assert first.body == audio and third.body == audio
    assert second.body != audio and second.status_line.startswith("HTTP/1.1 ")


async def test_many_pipelined_known_requests_to_a_client_that_does_not_read(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    """Every request answered once, in order (each has its own request id), however many
    the connection answered itself before its writes backed up."""
    _, url = upstream
    client = await make_proxy(url, client_auth="none")
    ids = [f"req-{i}" for i in range(8)]
    for request_id in ids:
        await until_known(client, speech_request(TEXT, extra=f"X-Request-ID: {request_id}\r\n"))
    order = [ids[(i * 5) % len(ids)] for i in range(600)]
    requests = [speech_request(TEXT, extra=f"X-Request-ID: {i}\r\n") for i in order]
    known = known_of(client)
    before = known.answered
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        for start in range(0, len(requests), 10):  # fewer than aiohttp's queue holds
            writer.write(b"".join(requests[start : start + 10]))
            await asyncio.sleep(0.005)  # the proxy's writes back up meanwhile
        got = [(await read_answer(reader)).get("X-Request-ID") for _ in order]
    finally:
        writer.close()
    assert got == order
    assert known.answered > before


async def test_a_client_closing_mid_answer_harms_no_one(
    upstream: Any, make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = upstream
    client = await make_proxy(url, client_auth="none")
    request = speech_request(TEXT)
    audio = (await until_known(client, request)).body
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(request * 40)
        await writer.drain()
        await reader.read(100)
        writer.transport.abort()
    (after,) = await exchange(client.port, request)
    assert after.body == audio
    assert not errors(caplog)


# -- a head held for its body -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["never", "closed", "extra"])
async def test_a_held_head_whose_body_does_not_come_as_expected(
    upstream: Any, make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    _, url = upstream
    client = await make_proxy(url, client_auth="none")
    request = speech_request(TEXT)
    audio = (await until_known(client, request)).body
    head, _, body = request.partition(b"\r\n\r\n")
    tasks = len(connection_tasks())
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(head + b"\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.01)  # held, waiting for its body
        if how == "closed":
            writer.transport.abort()
        elif how == "extra":
            writer.write(body + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = await read_answer(reader)
            second = await read_answer(reader)
            assert first.body == audio and b'"ok"' in second.body
        else:
            await asyncio.sleep(0.2)  # past the hold: aiohttp waits for the body
            writer.write(body)
            assert (await read_answer(reader)).body == audio
    finally:
        writer.close()
    (after,) = await exchange(client.port, request)
    assert after.body == audio
    gc.collect()
    await eventually(lambda: len(connection_tasks()) <= tasks, seconds=5)
    assert not errors(caplog), errors(caplog)


async def test_a_client_leaving_while_its_known_request_is_read_leaves_no_task(
    upstream: Any, make_proxy: ProxyFactory, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis.asyncio as aioredis

    _, url = upstream
    client = await make_proxy(url, client_auth="none", audio_cache_hot_tier_mb=0)
    request = speech_request(TEXT)
    audio = (await until_known(client, request)).body
    tasks = len(connection_tasks())
    store = aioredis.from_url(redis_url)
    try:
        await store.execute_command("CLIENT", "PAUSE", "300", "ALL")
        _, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(request)
        await writer.drain()
        await asyncio.sleep(0.05)  # being read
        writer.transport.abort()
        (after,) = await exchange(client.port, request)
    finally:
        await store.aclose()
    assert after.body == audio
    gc.collect()
    await eventually(lambda: len(connection_tasks()) <= tasks, seconds=5)
    assert not errors(caplog), errors(caplog)


# -- the store going away during a known read ---------------------------------------------------


async def _proxy_on_private(
    url: str, valkey: EmbeddedValkey, aiohttp_client: Any, **kw: Any
) -> Any:
    env = {
        "AUDIO_CACHE_STATS_FLUSH_SECONDS": "0.05",
        "REDIS_SOCKET_TIMEOUT_SECONDS": "0.5",
        "REDIS_CONNECT_TIMEOUT_SECONDS": "0.5",
        "REDIS_BREAKER_RESET_SECONDS": "5",
    }
    overrides = {
        "upstream_url": url,
        "audio_cache_key_prefix": f"r{uuid.uuid4().hex[:8]}",
        "client_auth": "none",
        "audio_cache_hot_tier_mb": 0,
        **kw,
    }
    loaded = load_settings(env=env, overrides=overrides)
    app = create_app(loaded, redis_url=valkey.url)
    options = runner_options(access_log=loaded.access_log, idle_timeout=60)
    server = ProxyTestServer(app, host="127.0.0.1")
    await server.start_server(**options)
    return await aiohttp_client(server)


@pytest.mark.parametrize("how", ["stopped", "killed"])
async def test_a_known_read_while_the_store_goes_away_fails_open_once(
    upstream: Any, aiohttp_client: Any, private_valkey: EmbeddedValkey, how: str
) -> None:
    """The client gets the upstream's audio, as the full path gives it without a store,
    and the store's failure is counted once: the request does not wait for a second
    timeout of the full path's own read."""
    from proxy.observability.metrics import METRICS

    fake, url = upstream
    client = await _proxy_on_private(url, private_valkey, aiohttp_client)
    request = speech_request(TEXT)
    audio = (await until_known(client, request)).body
    assert private_valkey.process is not None
    if how == "stopped":
        os.kill(private_valkey.process.pid, signal.SIGSTOP)
    else:
        private_valkey.stop()
    calls = fake.calls["openai"]
    errors_before = METRICS.redis_errors.labels("get")._value.get()
    started = time.monotonic()
    (answer,) = await exchange(client.port, request)
    took = time.monotonic() - started
    print(f"known read with the store {how}: answered in {took:.3f}s")
    assert answer.status_line == "HTTP/1.1 200 OK" and answer.body == audio
    # At most one upstream call: none when the request joins the fill that made the entry,
    # whole and still tidying up (its lock's release waits for the store that is gone).
    assert fake.calls["openai"] <= calls + 1
    assert METRICS.redis_errors.labels("get")._value.get() == errors_before + 1


# -- callers -------------------------------------------------------------------------------------


async def test_a_key_given_limits_by_a_keys_file_reload_is_limited_at_once(
    upstream: Any, make_proxy: ProxyFactory, tmp_path: Any
) -> None:
    import hashlib

    import yaml

    _, url = upstream
    path = tmp_path / "keys.yaml"

    def write(**limits: int) -> None:
        entry = {"sha256": hashlib.sha256(b"proxy-key-1").hexdigest(), "name": "k1", **limits}
        path.write_text(yaml.safe_dump({"keys": [entry]}), encoding="utf-8")

    write()
    client = await make_proxy(url, client_auth="keys", client_keys_file=str(path))
    request = speech_request(TEXT, extra="Authorization: Bearer proxy-key-1\r\n")
    await until_known(client, request)
    write(requests_per_minute=2)
    assert client.app[PROCESSOR].access.reload()
    answered = known_of(client).answered
    answers = [(await exchange(client.port, request))[0] for _ in range(4)]
    assert [a.status_line[:12] for a in answers] == ["HTTP/1.1 200"] * 2 + ["HTTP/1.1 429"] * 2
    assert known_of(client).answered == answered


async def test_a_tenant_header_is_part_of_what_is_known(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    """Two tenants of isolated namespaces: one's known request never answers the other's
    (the same bytes but the tenant header)."""
    fake, url = upstream
    client = await make_proxy(
        url,
        client_auth="none",
        tenant_header="X-Tenant-Id",
        tenant_header_trusted=True,
        tenants={"a": {"namespace": "isolated"}, "b": {"namespace": "isolated"}},
    )
    mine = await until_known(client, speech_request(TEXT, extra="X-Tenant-Id: a\r\n"))
    calls = fake.calls["openai"]
    (theirs,) = await exchange(client.port, speech_request(TEXT, extra="X-Tenant-Id: b\r\n"))
    assert theirs.get("X-Cache") == "MISS" and fake.calls["openai"] == calls + 1
    assert theirs.get("X-Audio-Cache-Key") != mine.get("X-Audio-Cache-Key")


# -- the SDKs ------------------------------------------------------------------------------------


async def test_the_elevenlabs_sdk_gets_known_hits_with_its_defaults(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    from elevenlabs.client import AsyncElevenLabs

    fake, url = upstream
    client = await make_proxy(url, client_auth="none")
    sdk = AsyncElevenLabs(base_url=str(client.make_url("")).rstrip("/"), api_key="xi-test")
    known = known_of(client)
    bodies = []
    for _ in range(10):
        chunks = sdk.text_to_speech.convert(voice_id="v42", text=TEXT)
        bodies.append(b"".join([c async for c in chunks]))
    assert len(set(bodies)) == 1 and bodies[0].startswith(b"RIFF")
    assert fake.calls["elevenlabs"] == 1
    assert known.answered == 8  # all but the miss and the hit that taught it


async def test_the_openai_sdk_streaming_gets_the_same_audio(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    from openai import AsyncOpenAI

    fake, url = upstream
    client = await make_proxy(url, client_auth="none")
    sdk = AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="sk-test", max_retries=0)
    known = known_of(client)
    bodies = []
    try:
        for _ in range(8):
            async with sdk.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input=TEXT
            ) as response:
                bodies.append(await response.read())
    finally:
        await sdk.close()
    assert len(set(bodies)) == 1 and bodies[0].startswith(b"RIFF")
    assert fake.calls["openai"] == 1
    assert known.answered == 6  # all but the miss and the hit that taught it


async def test_a_key_removed_while_its_request_is_served_is_not_learned_as_still_valid(
    upstream: Any, make_proxy: ProxyFactory, redis_url: str, tmp_path: Any
) -> None:
    """A reload of the keys file between the caller's identification and the hit it
    leads to: what is learned must not pair the new keys with the caller the old ones
    named, or the removed key's bytes are answered from then on."""
    import hashlib

    import redis.asyncio as aioredis
    import yaml

    _, url = upstream
    path = tmp_path / "keys.yaml"

    def write(*names: str) -> None:
        entries = [{"sha256": hashlib.sha256(n.encode()).hexdigest(), "name": n} for n in names]
        path.write_text(yaml.safe_dump({"keys": entries}), encoding="utf-8")

    write("proxy-key-1", "proxy-key-2")
    client = await make_proxy(
        url, client_auth="keys", client_keys_file=str(path), audio_cache_hot_tier_mb=0
    )
    request = speech_request(TEXT, extra="Authorization: Bearer proxy-key-1\r\n")
    (miss,) = await exchange(client.port, request)
    assert miss.get("X-Cache") == "MISS"
    known = known_of(client)
    assert not len(known)
    store = aioredis.from_url(redis_url)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        await store.execute_command("CLIENT", "PAUSE", "300", "ALL")  # its lookup waits
        writer.write(request)
        await writer.drain()
        await asyncio.sleep(0.05)
        write("proxy-key-2")
        assert client.app[PROCESSOR].access.reload()
        hit = await read_answer(reader)  # identified before the reload: served
        assert hit.get("X-Cache") == "HIT"
    finally:
        writer.close()
        await store.aclose()
    answered = known.answered
    (after,) = await exchange(client.port, request)
    assert after.status_line.startswith("HTTP/1.1 401"), after.status_line
    assert known.answered == answered


async def test_requests_known_before_a_keys_file_reload_are_known_again_after_it(
    upstream: Any, make_proxy: ProxyFactory, tmp_path: Any
) -> None:
    """A reload (even of the same keys) sends what was known through the full path once,
    which learns it again under the keys now in force."""
    import hashlib

    import yaml

    _, url = upstream
    path = tmp_path / "keys.yaml"
    entry = {"sha256": hashlib.sha256(b"proxy-key-1").hexdigest(), "name": "k1"}
    path.write_text(yaml.safe_dump({"keys": [entry]}), encoding="utf-8")
    client = await make_proxy(url, client_auth="keys", client_keys_file=str(path))
    request = speech_request(TEXT, extra="Authorization: Bearer proxy-key-1\r\n")
    await until_known(client, request)
    path.write_text(yaml.safe_dump({"keys": [entry]}) + "\n", encoding="utf-8")
    assert client.app[PROCESSOR].access.reload()
    known = known_of(client)
    answered = known.answered
    answers = [(await exchange(client.port, request))[0] for _ in range(3)]
    assert [a.status_line for a in answers] == ["HTTP/1.1 200 OK"] * 3
    assert known.answered == answered + 2  # the first took the full path, and was learned
    assert len(known) == 1
    (entry,) = known._known.values()
    assert known._bytes == entry.size and sum(known._heads.values()) == 1


async def test_a_tenant_with_a_request_limit_is_limited_on_every_request(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    client = await make_proxy(
        url,
        client_auth="none",
        tenant_header="X-Tenant-Id",
        tenant_header_trusted=True,
        tenants={"a": {"requests_per_minute": 4}},
    )
    request = speech_request(TEXT, extra="X-Tenant-Id: a\r\n")
    answers = [(await exchange(client.port, request))[0] for _ in range(6)]
    assert [a.status_line[:12] for a in answers] == ["HTTP/1.1 200"] * 4 + ["HTTP/1.1 429"] * 2
    assert not len(known_of(client))


async def test_pipelined_known_requests_whose_entry_was_deleted_are_one_miss_then_a_hit(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    from proxy.core.keys import CacheKey
    from tests.support.proxies import service_of

    fake, url = upstream
    client = await make_proxy(url, client_auth="none")
    request = speech_request(TEXT)
    learned = await until_known(client, request)
    key = learned.get("X-Audio-Cache-Key")
    assert key is not None
    assert await service_of(client).delete(CacheKey(key))
    calls = fake.calls["openai"]
    answers = await exchange(client.port, request, request, request)
    assert [a.get("X-Cache") for a in answers] == ["MISS", "HIT", "HIT"]
    assert len({a.body for a in answers}) == 1 and answers[0].body == learned.body
    # At most one upstream call: none when the miss replays the flight that filled the
    # deleted entry, while that flight's stream is still kept.
    assert fake.calls["openai"] <= calls + 1
