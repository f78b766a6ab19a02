"""The miss's wire to the upstream (proxy.request.upstream_wire) against real loopback
servers: raw sockets for the answers an upstream should not give, aiohttp for the rest."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.request.upstream import UpstreamClient, UpstreamError, UpstreamSettings
from proxy.request.upstream_wire import WireError, WireTimeout
from tests.support.loopback_upstream import fake_wav
from tests.support.proxies import ProxyFactory
from tests.support.raw_upstream import (
    BODY,
    OK,
    body_of,
    raw,
    speech_headers,
    wire_to,
)
from tests.support.servers import served
from tests.support.speech import speech_body
from tests.support.waits import eventually


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request on the connection with 5 bytes, keeping it open."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
        writer.write(OK % (5, b"audio"))
        await writer.drain()


async def test_one_connection_carries_request_after_request() -> None:
    async with raw(keep_answering) as (upstream, url):
        wire = wire_to(url)
        for _ in range(3):
            answer = await wire.request("POST", "/v1/audio/speech", speech_headers(), BODY)
            assert answer.status == 200 and answer.headers["Content-Type"] == "audio/wav"
            assert await body_of(answer) == b"audio"
        assert upstream.connections == 1 and wire.idle == 1
        await wire.close()


async def test_the_request_goes_out_as_aiohttps_client_writes_it() -> None:
    """The upstream cannot tell this client from the one it replaced."""

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        writer.write(OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1) % (2, b"ok"))
        await writer.drain()

    async with raw(once) as (upstream, url):
        headers = CIMultiDict(
            [
                ("Content-Type", "application/json"),
                ("Authorization", "Bearer sk-up"),
                ("X-Note", "café"),
                ("Accept-Encoding", "identity"),
            ]
        )
        for body in (BODY, b""):
            async with (
                aiohttp.ClientSession(
                    auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
                ) as session,
                session.post(
                    url / "v1/audio/speech", headers=headers, data=body, allow_redirects=False
                ) as theirs,
            ):
                await theirs.read()
            wire = wire_to(url)
            await body_of(await wire.request("POST", "/v1/audio/speech", headers.copy(), body))
            await wire.close()
        aiohttp_post, wire_post, aiohttp_empty, wire_empty = upstream.requests
        assert wire_post == aiohttp_post
        assert wire_empty == aiohttp_empty


async def test_chunks_are_read_as_they_come() -> None:
    first_read = asyncio.Event()

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await asyncio.wait_for(first_read.wait(), 5)
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the client goes

    async with raw(chunked) as (upstream, url):
        wire = wire_to(url)
        answer = await wire.request("POST", "/v1/audio/speech", speech_headers(), BODY)
        seen = []
        async with answer:
            async for chunk in answer.content.iter_any():
                seen.append(chunk)
                first_read.set()
        assert seen == [b"first", b"second"]  # the first before the server sent the rest
        assert wire.idle == 1  # chunked framing ended cleanly: kept
        await wire.close()


async def test_an_answer_framed_by_the_connections_end_is_whole_and_not_kept() -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\n\r\nID3" + b"x" * 5000)
        await writer.drain()

    async with raw(until_close) as (upstream, url):
        wire = wire_to(url)
        answer = await wire.request("POST", "/v1/audio/speech", speech_headers(), BODY)
        assert await body_of(answer) == b"ID3" + b"x" * 5000
        assert wire.idle == 0
        await wire.close()


async def test_an_unframed_answer_reset_by_the_upstream_is_not_taken_as_whole() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\n\r\nID3 partial")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset, not the end of the body

    async with raw(reset) as (upstream, url):
        wire = wire_to(url)
        answer = await wire.request("POST", "/x", speech_headers(), BODY)
        with pytest.raises(WireError, match="before the end"):
            await body_of(answer)
        await wire.close()


async def test_an_answer_cut_short_fails_and_its_connection_is_dropped() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        writer.write(OK % (1000, b"a" * 400))
        await writer.drain()

    async with raw(cut) as (upstream, url):
        wire = wire_to(url)
        answer = await wire.request("POST", "/v1/audio/speech", speech_headers(), BODY)
        with pytest.raises(WireError, match="before the end"):
            await body_of(answer)
        assert wire.idle == 0
        await wire.close()


async def test_bytes_after_an_answer_never_become_the_next_requests_answer() -> None:
    """A second answer smuggled behind the first: the first is read, the connection ends,
    and the next request gets its own answer on a connection of its own."""
    smuggled = OK % (8, b"SMUGGLED")

    async def two_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        if upstream.connections == 1:
            writer.write(OK % (5, b"first") + smuggled)
        else:
            writer.write(OK % (6, b"second"))
        await writer.drain()
        await reader.read()

    async with raw(two_answers) as (upstream, url):
        wire = wire_to(url)
        first = await wire.request("POST", "/v1/audio/speech", speech_headers(), BODY)
        assert await body_of(first) == b"first"
        second = await wire.request("POST", "/v1/audio/speech", speech_headers(), BODY)
        assert await body_of(second) == b"second"
        assert upstream.connections == 2
        await wire.close()


async def test_bytes_on_an_idle_connection_end_it() -> None:
    async def late_bytes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        writer.write(OK % (5, b"first"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(OK % (7, b"unasked"))
        await writer.drain()
        await reader.read()

    async with raw(late_bytes) as (upstream, url):
        wire = wire_to(url)
        answer = await wire.request("POST", "/v1/audio/speech", speech_headers(), BODY)
        assert await body_of(answer) == b"first"
        await eventually(lambda: wire.idle == 0 and wire.open == 0, what="connection kept")
        again = await wire.request("POST", "/v1/audio/speech", speech_headers(), BODY)
        assert await body_of(again) == b"first"
        await wire.close()


async def test_an_answer_that_is_not_http_is_a_wire_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw(garbage) as (upstream, url):
        wire = wire_to(url)
        with pytest.raises(WireError, match="not valid HTTP"):
            await wire.request("POST", "/v1/audio/speech", speech_headers(), BODY)
        assert wire.idle == 0
        await eventually(lambda: wire.open == 0, what="connection left open")


async def test_early_hints_are_skipped_for_the_answer_that_follows() -> None:
    async def hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        writer.write(OK % (5, b"audio"))
        await writer.drain()
        await reader.read()

    async with raw(hints) as (upstream, url):
        wire = wire_to(url)
        answer = await wire.request("POST", "/v1/audio/speech", speech_headers(), BODY)
        assert answer.status == 200 and "Link" not in answer.headers
        assert await body_of(answer) == b"audio"
        assert wire.idle == 1
        await wire.close()


async def test_connection_close_is_honoured() -> None:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        writer.write(OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1) % (2, b"ok"))
        await writer.drain()
        await reader.read()

    async with raw(closing) as (upstream, url):
        wire = wire_to(url)
        assert await body_of(await wire.request("POST", "/x", speech_headers(), BODY)) == b"ok"
        assert wire.idle == 0
        await wire.close()


async def test_a_connection_the_upstream_closed_while_idle_is_not_reused() -> None:
    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        writer.write(OK % (5, b"audio"))
        await writer.drain()
        await asyncio.sleep(0.05)  # then closes, as an upstream's keep-alive timeout does

    async with raw(once_then_close) as (upstream, url):
        wire = wire_to(url)
        assert await body_of(await wire.request("POST", "/x", speech_headers(), BODY)) == b"audio"
        await eventually(lambda: wire.idle == 0, what="closed connection still pooled")
        assert await body_of(await wire.request("POST", "/x", speech_headers(), BODY)) == b"audio"
        assert upstream.connections == 2
        await wire.close()


async def test_idle_connections_expire() -> None:
    async with raw(keep_answering) as (upstream, url):
        wire = wire_to(url, idle_seconds=0.05)
        await body_of(await wire.request("POST", "/x", speech_headers(), BODY))
        await asyncio.sleep(0.1)  # the expiry under test: longer than idle_seconds
        await body_of(await wire.request("POST", "/x", speech_headers(), BODY))
        assert upstream.connections == 2
        await wire.close()


async def test_no_more_idle_connections_are_kept_than_allowed() -> None:
    async with raw(keep_answering) as (upstream, url):
        wire = wire_to(url, max_idle=1)
        answers = await asyncio.gather(
            *(wire.request("POST", "/x", speech_headers(), BODY) for _ in range(3))
        )
        assert upstream.connections == 3
        for answer in answers:
            await body_of(answer)
        assert wire.idle == 1
        await eventually(lambda: wire.open == 1, what="surplus connections left open")
        await wire.close()


async def test_an_upstream_that_never_answers_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        await reader.read()

    async with raw(silent) as (upstream, url):
        wire = wire_to(url, read_timeout=0.2)
        with pytest.raises(WireTimeout):
            await wire.request("POST", "/x", speech_headers(), BODY)
        await eventually(lambda: wire.open == 0, what="timed-out connection left open")


async def test_an_answer_that_trickles_past_the_total_timeout_is_cut() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(200):  # 10 s at most
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with raw(trickle) as (upstream, url):
        wire = wire_to(url, read_timeout=1.0, total_timeout=0.4)
        answer = await wire.request("POST", "/x", speech_headers(), BODY)
        with pytest.raises(WireTimeout):
            await body_of(answer)
        assert wire.idle == 0
        await wire.close()


async def test_a_header_that_would_end_its_line_is_never_written() -> None:
    async with raw(keep_answering) as (upstream, url):
        wire = wire_to(url)
        for name, value in (
            ("X-Evil", "a\r\nX-Injected: 1"),
            ("X-Evil", "a\nb"),
            ("X-Nul", "\x00"),
        ):
            headers = speech_headers()
            headers[name] = value
            with pytest.raises(ValueError, match="line break or NUL"):
                await wire.request("POST", "/x", headers, BODY)
        assert upstream.connections == 0
        await wire.close()


async def test_a_large_body_read_slowly_arrives_whole() -> None:
    audio = bytes(range(256)) * (8 * 4096)  # 8 MiB, more than the reader may fall behind

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        writer.write(OK % (len(audio), audio))
        await writer.drain()
        await reader.read()

    async with raw(big) as (upstream, url):
        wire = wire_to(url)
        answer = await wire.request("POST", "/x", speech_headers(), BODY)
        crc, size = 0, 0
        async with answer:
            async for chunk in answer.content.iter_any():
                crc, size = zlib.crc32(chunk, crc), size + len(chunk)
                await asyncio.sleep(0.001)  # a slow reader: the socket's reads pause
        assert (size, crc) == (len(audio), zlib.crc32(audio))
        assert wire.idle == 1
        await wire.close()


async def test_a_request_cancelled_before_its_answer_closes_its_connection() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        await reader.read()

    async with raw(slow) as (upstream, url):
        wire = wire_to(url)
        task = asyncio.ensure_future(wire.request("POST", "/x", speech_headers(), BODY))
        await eventually(lambda: upstream.requests, what="request not sent")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: wire.open == 0, what="cancelled connection left open")


async def test_a_head_that_comes_a_few_bytes_at_a_time_is_read_whole() -> None:
    answer_bytes = (
        b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nX-Sample-Rate: 24000\r\n"
        b"Content-Length: 5\r\n\r\naudio"
    )

    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        for i in range(0, len(answer_bytes), 3):
            writer.write(answer_bytes[i : i + 3])
            await writer.drain()
            await asyncio.sleep(0.001)  # each piece its own read
        await reader.read()

    async with raw(dribble) as (upstream, url):
        wire = wire_to(url)
        answer = await wire.request("POST", "/x", speech_headers(), BODY)
        assert answer.headers["X-Sample-Rate"] == "24000"
        assert answer.headers["Content-Type"] == "audio/wav"
        assert await body_of(answer) == b"audio"
        assert wire.idle == 1
        await wire.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def https_upstream(ca: trustme.CA) -> AsyncIterator[URL]:
    async def speech(request: web.Request) -> web.Response:
        return web.Response(body=b"secure audio", content_type="audio/wav")

    app = web.Application()
    app.router.add_post("/v1/audio/speech", speech)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield URL(f"https://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


async def test_https_upstreams_are_verified_and_reused(ca: trustme.CA) -> None:
    async with https_upstream(ca) as url:
        trusted = ssl.create_default_context()
        ca.configure_trust(trusted)
        wire = wire_to(url, ssl_context=trusted)
        for _ in range(2):
            answer = await wire.request("POST", "/v1/audio/speech", speech_headers(), BODY)
            assert await body_of(answer) == b"secure audio"
        assert wire.open == 1
        await wire.close()
        untrusted = wire_to(url)  # the system's store does not know the tests' CA
        with pytest.raises(ssl.SSLCertVerificationError):
            await untrusted.request("POST", "/v1/audio/speech", speech_headers(), BODY)
        await untrusted.close()


async def test_the_upstream_client_turns_wire_failures_into_upstream_errors() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"not http\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def client_for(url: URL) -> UpstreamClient:
        client = UpstreamClient(
            UpstreamSettings(
                base_url=str(url), connect_timeout=1.0, read_timeout=1.0, total_timeout=2.0
            )
        )
        await client.start()
        return client

    async with raw(garbage) as (_, url):
        client = await client_for(url)
        with pytest.raises(UpstreamError) as failed:
            await client.speech("POST", "/v1/audio/speech", "", speech_headers(), BODY)
        assert (failed.value.status, failed.value.kind) == (502, "protocol")
        await client.close()
    refused = await client_for(url)  # the server above is gone: nothing listens there
    with pytest.raises(UpstreamError) as failed:
        await refused.speech("POST", "/v1/audio/speech", "", speech_headers(), BODY)
    assert (failed.value.status, failed.value.kind) == (502, "connect")
    await refused.close()


async def test_misses_through_the_proxy_share_one_upstream_connection(
    make_proxy: ProxyFactory,
) -> None:
    peers: list[Any] = []

    async def speech(request: web.Request) -> web.Response:
        body = await request.json()
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return web.Response(body=fake_wav(body["input"]), content_type="audio/wav")

    app = web.Application()
    app.router.add_post("/v1/audio/speech", speech)
    async with served(app) as url:
        client = await make_proxy(url, client_auth="none")
        for text in ("Uno", "Dos", "Tres"):
            answer = await client.post("/v1/audio/speech", json=speech_body(text))
            assert (answer.status, answer.headers["X-Cache"]) == (200, "MISS")
            assert await answer.read() == fake_wav(text)
    assert len(peers) == 3 and len(set(peers)) == 1


@pytest.mark.parametrize(("client", "status"), [("lean", 502), ("aiohttp", 200)])
async def test_upstream_miss_client_aiohttp_is_the_way_out_for_a_sloppy_upstream(
    make_proxy: ProxyFactory, client: str, status: int
) -> None:
    """An upstream that ends its lines with bare LFs: the lean client refuses its answer
    (502, nothing stored); aiohttp's, chosen by the setting, takes it."""
    audio = fake_wav("Sloppy")

    async def bare_lf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await upstream.request(reader)
            head = f"HTTP/1.1 200 OK\nContent-Type: audio/wav\nContent-Length: {len(audio)}\n\n"
            writer.write(head.encode() + audio)
            await writer.drain()

    async with raw(bare_lf) as (upstream, url):
        proxy = await make_proxy(str(url), client_auth="none", upstream_miss_client=client)
        answer = await proxy.post("/v1/audio/speech", json=speech_body("Sloppy"))
        assert answer.status == status
        if status == 200:
            assert await answer.read() == audio
        else:
            assert (await answer.json())["error"]["upstream_error"] == "protocol"
