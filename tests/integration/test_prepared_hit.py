"""Plain hits written as prepared bytes (proxy.request.prepared_hit), on a real proxy, real Valkey
and a loopback upstream, read back byte by byte from a raw socket.

A prepared hit must be indistinguishable from the answer aiohttp builds for the same
entry, frame correctly on a kept-alive connection, and step aside for every request that
is not plain.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from proxy.app import SERVICE
from proxy.core.keys import CacheKey
from proxy.request.prepared_hit import SPLIT_AT
from proxy.store.service import EntryLabels
from tests.support.hot_replicas import hot_proxy
from tests.support.known import until_known
from tests.support.proxies import ProxyFactory
from tests.support.raw_http import exchange, read_answer, speech_request
from tests.support.speech import SPEECH_PATH, speech_body
from tests.support.waits import eventually, until_filled


async def test_a_prepared_hit_matches_the_answer_aiohttp_builds(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    hot = await hot_proxy(make_proxy, url, "Breakfast is served.")
    from_valkey = await make_proxy(url, audio_cache_hot_tier_mb=0)
    for _ in range(2):
        await from_valkey.post(SPEECH_PATH, json=speech_body("Breakfast is served."))
    for client in (hot, from_valkey):
        assert client.port is not None
        # A validator that does not match takes the long way, to a 200 built by aiohttp.
        (prepared,) = await exchange(client.port, speech_request("Breakfast is served."))
        (built,) = await exchange(
            client.port, speech_request("Breakfast is served.", extra='If-None-Match: "x"\r\n')
        )
        assert prepared.status_line == built.status_line == "HTTP/1.1 200 OK"
        assert prepared.body == built.body and prepared.body.startswith(b"RIFF")
        assert prepared.get("X-Cache") == "HIT"
        assert prepared.stable() == built.stable()
        assert sorted(k.lower() for k, _ in prepared.headers) == sorted(
            k.lower() for k, _ in built.headers
        )
        for answer in (prepared, built):
            ttl = answer.get("Cache-Control")
            assert ttl is not None and ttl.startswith("max-age=")
            assert answer.get("Cache-Status") == f"tts-cache; hit; ttl={ttl[8:]}"


@pytest.mark.parametrize("hot_tier_mb", [0, 64], ids=["from-valkey", "hot"])
async def test_a_large_hit_written_in_two_parts_is_the_same_answer(
    upstream: Any,
    make_proxy: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
    hot_tier_mb: int,
) -> None:
    """Audio of SPLIT_AT bytes or more leaves after its head instead of joined to it (no
    copy of the body): the bytes on the wire, the framing of pipelined answers and the
    access log's byte count stay those of a joined answer, on the full path's prepared hit
    and (hot) on the connection's known hit."""
    _, url = upstream
    client = await make_proxy(url, audio_cache_hot_tier_mb=hot_tier_mb, client_auth="none")
    assert client.port is not None
    text = "The spa opens at seven."
    r = await client.post(SPEECH_PATH, json=speech_body(text))
    await r.read()
    await until_filled(client)  # the miss's own entry is stored before it is replaced
    key = CacheKey(r.headers["X-Audio-Cache-Key"])
    pattern = bytes(range(256)) * (SPLIT_AT // 128)
    audio = b"RIFF" + len(pattern).to_bytes(4, "little") + b"WAVEfmt " + pattern
    assert len(audio) >= SPLIT_AT
    labels = EntryLabels("default", "openai", "alloy", "tts-1", "default")
    await client.app[SERVICE].put(
        key, audio, media_type="audio/wav", ttl_seconds=60, labels=labels, headers=[]
    )
    answers = []
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        if hot_tier_mb:
            answers.append(await until_known(client, speech_request(text)))
        requests = [speech_request(text, extra=f"X-Request-ID: big-{i}\r\n") for i in range(3)]
        answers += await exchange(client.port, *requests)
        # A validator that does not match: a 200 built by aiohttp, for comparison.
        (built,) = await exchange(client.port, speech_request(text, extra='If-None-Match: "x"\r\n'))
        await eventually(
            lambda: any(getattr(r, "fields", {}).get("request_id") == "big-2"
                        for r in caplog.records)
        )  # fmt: skip
    assert built.body == audio
    for answer in answers:
        assert answer.status_line == "HTTP/1.1 200 OK"
        assert answer.body == audio
        assert answer.stable() == built.stable()
    assert [a.get("X-Request-ID") for a in answers[-3:]] == ["big-0", "big-1", "big-2"]
    sent = {
        rec.fields["request_id"]: rec.fields["bytes_sent"]  # type: ignore[attr-defined]
        for rec in caplog.records
        if rec.name == "proxy.access"
    }
    for answer in answers:
        head = "\r\n".join([answer.status_line, *(f"{k}: {v}" for k, v in answer.headers)])
        assert sent[answer.get("X-Request-ID")] == len(head) + 4 + len(audio)


async def test_pipelined_hits_are_framed_and_keep_the_connection(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    client = await hot_proxy(make_proxy, url, "The pool closes at ten.")
    requests = [
        speech_request("The pool closes at ten.", extra=f"X-Request-ID: trace-{i}\r\n")
        for i in range(3)
    ]
    # Two plain hits around a request that is not plain (Range): all in order, one connection.
    requests.insert(1, speech_request("The pool closes at ten.", extra="Range: bytes=0-3\r\n"))
    answers = await exchange(client.port, *requests)
    assert [a.status_line for a in answers] == [
        "HTTP/1.1 200 OK",
        "HTTP/1.1 206 Partial Content",
    ] + ["HTTP/1.1 200 OK"] * 2
    audio = answers[0].body
    assert answers[1].body == audio[:4]
    assert [a.body for a in answers[2:]] == [audio, audio]
    assert [a.get("X-Request-ID") for a in answers if a.status_line.endswith("200 OK")] == [
        "trace-0",
        "trace-1",
        "trace-2",
    ]
    assert all(a.get("Connection") is None for a in answers)


async def test_requests_that_are_not_plain_are_answered_by_aiohttp(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    _, url = upstream
    client = await hot_proxy(make_proxy, url, "Late checkout on request.")
    text = "Late checkout on request."
    (plain,) = await exchange(client.port, speech_request(text))
    # HTTP/1.0: the answer speaks 1.0 and the connection ends with it.
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(speech_request(text, version="1.0"))
    old = await read_answer(reader)
    assert old.status_line == "HTTP/1.0 200 OK" and old.body == plain.body
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    # Connection: close is honoured, and said.
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(speech_request(text, extra="Connection: close\r\n"))
    closing = await read_answer(reader)
    assert closing.get("Connection") == "close" and closing.body == plain.body
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    # HEAD (on a GET route): the headers of the whole answer and no body; the next answer
    # on the connection follows at once.
    path = "/process?INPUT_TEXT=Late+checkout&VOICE=cmu-slt-hsmm&LOCALE=en_US"
    for _ in range(3):
        whole = await client.get(path)
        audio = await whole.read()
    assert whole.headers["X-Cache"] == "HIT"
    get = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    head, after = await exchange(client.port, b"HEAD" + get[3:], get)
    assert head.status_line == "HTTP/1.1 200 OK" and head.body == b""
    assert head.get("Content-Length") == str(len(audio))
    assert after.body == audio
    assert head.stable() == after.stable()


async def test_the_access_line_of_a_prepared_hit(
    upstream: Any, make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = upstream
    client = await hot_proxy(make_proxy, url, "Room service all night.")
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        writer.write(speech_request("Room service all night.", extra="X-Request-ID: line-1\r\n"))
        answer = await read_answer(reader)
        await eventually(lambda: any(getattr(r, "fields", {}).get("request_id") == "line-1"
                                     for r in caplog.records))  # fmt: skip
    writer.close()
    lines = [rec for rec in caplog.records if rec.name == "proxy.access"]
    fields = lines[-1].fields  # type: ignore[attr-defined]
    head_size = len("\r\n".join([answer.status_line, *(f"{k}: {v}" for k, v in answer.headers)]))
    assert fields["request_id"] == "line-1"
    assert (fields["route"], fields["result"], fields["status"]) == ("openai", "hit", 200)
    assert fields["content_length"] == len(answer.body)
    assert fields["bytes_sent"] == head_size + 4 + len(answer.body)


@pytest.mark.parametrize(
    ("headers", "media_type"),
    [([("X-Note", "ok\r\nX-Evil: 1")], "audio/wav"), ([], "audio/wav\r\nX-Evil: 1")],
    ids=["header", "media-type"],
)
async def test_an_entry_with_a_header_that_would_split_the_answer_is_synthesized_again(
    upstream: Any, make_proxy: ProxyFactory, headers: list[tuple[str, str]], media_type: str
) -> None:
    fake, url = upstream
    client = await make_proxy(url, audio_cache_hot_tier_mb=0)
    assert client.port is not None
    r = await client.post(SPEECH_PATH, json=speech_body("Smuggled."))
    audio = await r.read()
    service = client.app[SERVICE]
    key = CacheKey(r.headers["X-Audio-Cache-Key"])
    labels = EntryLabels("default", "openai", "alloy", "tts-1", "default")
    # As a store written by something else could hold it: the entry reads as corrupt, is
    # deleted, and the request goes to the upstream, whose answer replaces it.
    await service.put(
        key, audio, media_type=media_type, ttl_seconds=60, labels=labels, headers=headers
    )
    (answer,) = await exchange(client.port, speech_request("Smuggled."))
    assert answer.status_line.startswith("HTTP/1.1 200")
    assert answer.get("X-Evil") is None
    assert answer.get("X-Cache") == "MISS"
    assert answer.body == audio
    assert fake.calls["openai"] == 2
    (again,) = await exchange(client.port, speech_request("Smuggled."))
    assert (again.get("X-Cache"), again.get("Content-Type"), again.body) == (
        "HIT", "audio/wav", audio
    )  # fmt: skip


async def test_a_client_that_does_not_read_is_not_buffered_for(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    """Pipelined plain hits the client never reads wait for it, as aiohttp's answers do:
    the proxy's write buffers stay bounded instead of holding every answer."""
    _, url = upstream
    client = await hot_proxy(make_proxy, url, "Nobody reads this.")
    assert client.server.runner is not None
    server = client.server.runner.server
    assert server is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        writer.write(speech_request("Nobody reads this.") * 2000)  # ~8 MB of answers
        await asyncio.sleep(1.0)  # time for the proxy to (wrongly) buffer them all
        buffered = sum(
            h.transport.get_write_buffer_size() for h in server.connections if h.transport
        )
        assert buffered < 256 * 1024, f"{buffered} bytes buffered for a client not reading"
        first = await read_answer(reader)  # and the answers are still there, in order
        assert first.status_line == "HTTP/1.1 200 OK" and first.get("X-Cache") == "HIT"
    finally:
        writer.close()


async def test_a_header_that_was_not_utf8_is_written_as_aiohttp_writes_it(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    """aiohttp's client keeps the bytes of a header that is not UTF-8 as lone surrogates;
    its server drops them when it writes the header. A prepared hit does the same."""
    _, url = upstream
    client = await make_proxy(url, audio_cache_hot_tier_mb=0)
    assert client.port is not None
    r = await client.post(SPEECH_PATH, json=speech_body("Andrés speaking."))
    audio = await r.read()
    await client.app[SERVICE].put(
        CacheKey(r.headers["X-Audio-Cache-Key"]),
        audio,
        media_type="audio/wav",
        ttl_seconds=60,
        labels=EntryLabels(),
        headers=[("X-Voice-Name", "Andr\udce9s")],  # b"Andr\xe9s" as the client decoded it
    )
    text = "Andrés speaking."
    (prepared,) = await exchange(client.port, speech_request(text))
    (built,) = await exchange(client.port, speech_request(text, extra='If-None-Match: "x"\r\n'))
    assert prepared.status_line == built.status_line == "HTTP/1.1 200 OK"
    assert prepared.get("X-Voice-Name") == built.get("X-Voice-Name") == "Andrs"
    assert prepared.body == built.body == audio
