"""Known hits (proxy.request.known_hits, proxy.request.connection): a repeated request for a
hot entry answered by the connection from its bytes, on a real proxy, real Valkey and
loopback upstreams, spoken to over raw sockets.

Such an answer must be the full path's answer, byte for byte but the clock and the request
id; it must leave the same traces (hit counted, access line); and every check the full path
makes that can change between two identical requests (the credential, the keys file, the
entry itself, the connection's state) must still be made.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from proxy.app import PROCESSOR
from proxy.core.keys import CacheKey
from tests.support.keyed_upstream import keyed_upstream
from tests.support.known import errors, known_of, until_known
from tests.support.proxies import ProxyFactory, service_of
from tests.support.raw_http import exchange, read_answer, speech_request
from tests.support.waits import eventually

TEXT = "The spa opens at nine."


async def test_a_known_hit_is_the_answer_the_full_path_gives(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    client = await make_proxy(url, client_auth="none")
    request = speech_request(TEXT)
    known = await until_known(client, request)
    # The same request with a header only the full path takes (a validator that does not
    # match): aiohttp builds its 200.
    (built,) = await exchange(client.port, speech_request(TEXT, extra='If-None-Match: "x"\r\n'))
    assert built.status_line == known.status_line == "HTTP/1.1 200 OK"
    assert known.body == built.body and known.body.startswith(b"RIFF")
    assert known.stable() == built.stable()
    assert sorted(k.lower() for k, _ in known.headers) == sorted(
        k.lower() for k, _ in built.headers
    )
    ttl = known.get("Cache-Control")
    assert ttl is not None and ttl.startswith("max-age=")
    assert known.get("Cache-Status") == f"tts-cache; hit; ttl={ttl[8:]}"
    assert known.get("X-Request-ID") not in (None, built.get("X-Request-ID"))


async def test_a_different_request_is_never_answered_from_another_ones_bytes(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = upstream
    client = await make_proxy(url, client_auth="none")
    await until_known(client, speech_request(TEXT))
    calls = fake.calls["openai"]
    # One byte of the body differs (the voice): another entry, a miss, the upstream called.
    other = speech_request(TEXT).replace(b'"alloy"', b'"coral"')
    assert other != speech_request(TEXT)
    (answer,) = await exchange(client.port, other)
    assert answer.get("X-Cache") == "MISS"
    assert fake.calls["openai"] == calls + 1


async def test_pipelined_requests_keep_their_order_around_a_known_hit(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    client = await make_proxy(url, client_auth="none")
    request = speech_request(TEXT, extra="X-Request-ID: same-id\r\n")
    audio = (await until_known(client, request)).body
    health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answered = known_of(client).answered
    answers = await exchange(
        client.port,
        request,
        health,
        request,
        speech_request("A sentence never asked for."),
        request,
    )
    assert [a.status_line for a in answers] == ["HTTP/1.1 200 OK"] * 5
    assert [a.body for a in answers[::2]] == [audio] * 3
    assert b'"ok"' in answers[1].body
    assert answers[3].get("X-Cache") == "MISS"
    assert [a.get("X-Request-ID") for a in answers[::2]] == ["same-id"] * 3
    # The first was answered as it arrived; what followed the health check went in order
    # through aiohttp.
    assert known_of(client).answered == answered + 1


async def test_a_connection_answered_only_by_known_hits_is_kept_alive(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    """The idle timeout counts from the last answer, whoever wrote it."""
    _, url = upstream
    client = await make_proxy(url, client_auth="none", client_idle_timeout_seconds=1.0)
    request = speech_request(TEXT)
    await until_known(client, request)
    known = known_of(client)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        before = known.answered
        for _ in range(8):  # 2.4 s of known hits, each well within the idle timeout
            writer.write(request)
            answer = await read_answer(reader)
            assert answer.status_line == "HTTP/1.1 200 OK"
            await asyncio.sleep(0.3)
        assert known.answered == before + 8
        # Idle past the timeout: closed, as any idle connection is.
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_an_http_10_request_with_the_same_bytes_is_not_a_known_hit(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    client = await make_proxy(url, client_auth="none")
    await until_known(client, speech_request(TEXT))
    answered = known_of(client).answered
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(speech_request(TEXT, version="1.0"))
    old = await read_answer(reader)
    assert old.status_line == "HTTP/1.0 200 OK"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert known_of(client).answered == answered


async def test_a_deleted_entry_is_not_answered_from_its_bytes(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = upstream
    client = await make_proxy(url, client_auth="none")
    request = speech_request(TEXT)
    answer = await until_known(client, request)
    key = answer.get("X-Audio-Cache-Key")
    assert key is not None
    service = service_of(client)
    assert await service.delete(CacheKey(key))
    hot = service.hot
    assert hot is not None
    await eventually(lambda: key not in hot, what="the delete reached the hot tier")
    calls = fake.calls["openai"]
    (again,) = await exchange(client.port, request)
    assert again.get("X-Cache") == "MISS"
    # At most one upstream call: none when the miss replays the flight that filled the
    # deleted entry, while that flight's stream is still kept.
    assert fake.calls["openai"] <= calls + 1


async def test_a_known_hit_is_counted_and_logged_like_any_hit(
    upstream: Any, make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = upstream
    client = await make_proxy(url, client_auth="none")
    request = speech_request(TEXT, extra="X-Request-ID: known-1\r\n")
    await until_known(client, request)
    service = service_of(client)
    hot = service.hot
    assert hot is not None
    hits = hot.stats.hits
    known = known_of(client)
    answered = known.answered
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        (answer,) = await exchange(client.port, request)
        await eventually(
            lambda: any(
                getattr(r, "fields", {}).get("request_id") == "known-1" for r in caplog.records
            )
        )
    assert known.answered == answered + 1
    assert hot.stats.hits == hits + 1
    lines = [r for r in caplog.records if getattr(r, "fields", {}).get("request_id") == "known-1"]
    assert len(lines) == 1  # one record per request
    fields = lines[0].fields  # type: ignore[attr-defined]
    head = "\r\n".join([answer.status_line, *(f"{k}: {v}" for k, v in answer.headers)])
    assert (fields["method"], fields["path"], fields["route"]) == (
        "POST",
        "/v1/audio/speech",
        "openai",
    )
    assert (fields["result"], fields["status"]) == ("hit", 200)
    assert fields["content_length"] == len(answer.body)
    assert fields["bytes_sent"] == len(head) + 4 + len(answer.body)
    assert fields["remote"] == "127.0.0.1"
    assert fields["duration_ms"] >= 0
    assert lines[0].getMessage().startswith("POST /v1/audio/speech 200 hit route=openai ")


async def test_a_credential_the_upstream_stops_accepting_is_not_answered_from_its_bytes(
    make_proxy: ProxyFactory,
) -> None:
    """client_auth upstream: the bytes carry the credential, but its acceptance is checked
    on every request, and a refusal ends it at once."""
    async with keyed_upstream({"client-good-1"}) as (fake, url):
        client = await make_proxy(url, client_auth="upstream")
        request = speech_request(TEXT, extra="Authorization: Bearer client-good-1\r\n")
        await until_known(client, request)
        fake.valid.clear()  # the account is closed upstream
        refused = fake.refused
        # Its next miss is refused, and the proxy learns it.
        miss = speech_request("Another sentence.", extra="Authorization: Bearer client-good-1\r\n")
        (first,) = await exchange(client.port, miss)
        assert first.status_line.startswith("HTTP/1.1 401")
        answered = known_of(client).answered
        (again,) = await exchange(client.port, request)
        assert again.status_line.startswith("HTTP/1.1 401")  # the upstream's word, not audio
        assert fake.refused == refused + 2
        assert known_of(client).answered == answered


async def test_a_key_removed_from_the_keys_file_is_not_answered_from_its_bytes(
    upstream: Any, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    import hashlib

    _, url = upstream
    path = tmp_path / "keys.yaml"

    def write(*names: str) -> None:
        entries = [{"sha256": hashlib.sha256(n.encode()).hexdigest(), "name": n} for n in names]
        path.write_text(yaml.safe_dump({"keys": entries}), encoding="utf-8")

    write("proxy-key-1", "proxy-key-2")
    client = await make_proxy(url, client_auth="keys", client_keys_file=str(path))
    request = speech_request(TEXT, extra="Authorization: Bearer proxy-key-1\r\n")
    await until_known(client, request)
    write("proxy-key-2")
    assert client.app[PROCESSOR].access.reload()
    answered = known_of(client).answered
    (answer,) = await exchange(client.port, request)
    assert answer.status_line.startswith("HTTP/1.1 401")
    assert known_of(client).answered == answered


async def test_a_known_request_whose_body_comes_apart_from_its_head_is_a_known_hit(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    """httpx (under the OpenAI SDK) writes a request's head and body apart."""
    _, url = upstream
    client = await make_proxy(url, client_auth="none")
    request = speech_request(TEXT)
    audio = (await until_known(client, request)).body
    head, _, body = request.partition(b"\r\n\r\n")
    known = known_of(client)
    answered = known.answered
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(head + b"\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.01)  # read apart by the proxy
        writer.write(body)
        answer = await read_answer(reader)
        assert answer.status_line == "HTTP/1.1 200 OK" and answer.body == audio
        assert known.answered == answered + 1
        # A body that takes longer than the wait: aiohttp takes the request, as ever.
        writer.write(head + b"\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(body)
        late = await read_answer(reader)
        assert late.status_line == "HTTP/1.1 200 OK" and late.body == audio
        assert known.answered == answered + 1
    finally:
        writer.close()


async def test_the_openai_sdk_gets_known_hits_with_its_defaults(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    from openai import AsyncOpenAI

    _, url = upstream
    client = await make_proxy(url, client_auth="none")
    sdk = AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="sk-test", max_retries=0)
    known = known_of(client)
    bodies = []
    try:
        for _ in range(10):
            speech = await sdk.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)
            bodies.append(speech.read())
    finally:
        await sdk.close()
    assert len(set(bodies)) == 1 and bodies[0].startswith(b"RIFF")
    assert known.answered >= 1


async def test_a_known_request_is_answered_from_the_store_when_its_entry_is_not_hot(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    client = await make_proxy(url, client_auth="none", audio_cache_hot_tier_mb=0)
    request = speech_request(TEXT)
    known = await until_known(client, request)
    (built,) = await exchange(client.port, speech_request(TEXT, extra='If-None-Match: "x"\r\n'))
    assert known.body == built.body and known.body.startswith(b"RIFF")
    assert known.stable() == built.stable()
    assert known.get("X-Cache") == "HIT"


async def test_requests_behind_a_known_one_being_read_wait_their_turn(
    upstream: Any, make_proxy: ProxyFactory, redis_url: str
) -> None:
    _, url = upstream
    client = await make_proxy(url, client_auth="none", audio_cache_hot_tier_mb=0)
    request = speech_request(TEXT, extra="X-Request-ID: first\r\n")
    audio = (await until_known(client, request)).body
    health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    known = known_of(client)
    answered = known.answered
    store = aioredis.from_url(redis_url)
    try:
        await store.execute_command("CLIENT", "PAUSE", "300", "ALL")  # the read waits
        answers = await exchange(client.port, request, health, request)
    finally:
        await store.aclose()
    assert [a.status_line for a in answers] == ["HTTP/1.1 200 OK"] * 3
    assert answers[0].body == answers[2].body == audio
    assert b'"ok"' in answers[1].body
    assert known.answered == answered + 1  # the first; the others went through aiohttp


async def test_a_client_leaving_while_its_known_request_is_read_harms_no_one(
    upstream: Any, make_proxy: ProxyFactory, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = upstream
    client = await make_proxy(url, client_auth="none", audio_cache_hot_tier_mb=0)
    request = speech_request(TEXT)
    audio = (await until_known(client, request)).body
    store = aioredis.from_url(redis_url)
    try:
        await store.execute_command("CLIENT", "PAUSE", "300", "ALL")
        _, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(request)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # gone before its answer
        await writer.wait_closed()
        (after,) = await exchange(client.port, request)
    finally:
        await store.aclose()
    assert after.status_line == "HTTP/1.1 200 OK" and after.body == audio
    assert not errors(caplog)


async def test_a_known_request_whose_entry_is_gone_is_one_miss(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = upstream
    client = await make_proxy(url, client_auth="none", audio_cache_hot_tier_mb=0)
    request = speech_request(TEXT)
    answer = await until_known(client, request)
    key = answer.get("X-Audio-Cache-Key")
    assert key is not None
    service = service_of(client)
    assert await service.delete(CacheKey(key))
    misses, calls = service.session_misses, fake.calls["openai"]
    (again,) = await exchange(client.port, request)
    assert again.get("X-Cache") == "MISS"
    # At most one upstream call: none when the miss replays the flight that filled the
    # deleted entry, while that flight's stream is still kept.
    assert fake.calls["openai"] <= calls + 1
    assert service.session_misses == misses + 1  # counted once, by the full path


async def test_with_known_hits_off_every_request_takes_the_full_path(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    client = await make_proxy(url, client_auth="none", known_hits_enabled=False)
    assert client.app[PROCESSOR].known is None
    request = speech_request(TEXT)
    answers = [(await exchange(client.port, request))[0] for _ in range(4)]
    assert [a.get("X-Cache") for a in answers] == ["MISS", "HIT", "HIT", "HIT"]
    assert len({a.body for a in answers}) == 1


async def test_a_graceful_shutdown_waits_for_a_known_hit_being_read(
    upstream: Any, make_proxy: ProxyFactory, redis_url: str
) -> None:
    _, url = upstream
    client = await make_proxy(url, client_auth="none", audio_cache_hot_tier_mb=0)
    request = speech_request(TEXT)
    audio = (await until_known(client, request)).body
    answered = known_of(client).answered
    store = aioredis.from_url(redis_url)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        await store.execute_command("CLIENT", "PAUSE", "400", "ALL")
        writer.write(request)
        await writer.drain()
        await asyncio.sleep(0.05)  # its entry is being read
        closing = asyncio.create_task(client.server.close())
        answer = await read_answer(reader)
        await asyncio.wait_for(closing, 10)
    finally:
        writer.close()
        await store.aclose()
    assert answer.status_line == "HTTP/1.1 200 OK" and answer.body == audio
    assert known_of(client).answered == answered + 1


async def test_a_shutdown_during_a_known_read_that_finds_nothing_still_answers(
    upstream: Any, make_proxy: ProxyFactory, redis_url: str
) -> None:
    """The read hands the request to aiohttp's task, which answers it (a miss) before the
    connection ends, as it would any request it had been given."""
    fake, url = upstream
    client = await make_proxy(url, client_auth="none", audio_cache_hot_tier_mb=0)
    request = speech_request(TEXT)
    answer = await until_known(client, request)
    key = answer.get("X-Audio-Cache-Key")
    assert key is not None
    assert await service_of(client).delete(CacheKey(key))
    calls = fake.calls["openai"]
    store = aioredis.from_url(redis_url)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        await store.execute_command("CLIENT", "PAUSE", "300", "ALL")
        writer.write(request)
        await writer.drain()
        await asyncio.sleep(0.05)  # its entry is being read, and is not there
        closing = asyncio.create_task(client.server.close())
        late = await asyncio.wait_for(read_answer(reader), 10)
        await asyncio.wait_for(closing, 10)
    finally:
        writer.close()
        await store.aclose()
    assert late.status_line == "HTTP/1.1 200 OK" and late.get("X-Cache") == "MISS"
    # At most one upstream call: none when the miss replays the flight that filled the
    # deleted entry, while that flight's stream is still kept.
    assert fake.calls["openai"] <= calls + 1
