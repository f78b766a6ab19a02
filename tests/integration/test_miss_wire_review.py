"""A hostile upstream, or a hostile client whose headers are forwarded, against the miss's
wire (proxy.request.upstream_wire): raw loopback servers answer what no upstream should.
For each: what the caller gets, whether the connection goes back to the pool, and
(through a real proxy) what the client gets and that nothing is stored."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.request.upstream_wire import MAX_HEAD_BYTES, UpstreamWire, WireError
from proxy.state import PROCESSOR
from tests.support.proxies import ProxyFactory, raw_request
from tests.support.raw_http import speech_request
from tests.support.raw_upstream import (
    BODY,
    OK,
    Handler,
    RawUpstream,
    body_of,
    raw,
    speech_headers,
    wire_to,
)
from tests.support.speech import speech_body
from tests.support.waits import eventually


def answering(*answers: bytes) -> Callable[[RawUpstream], Handler]:
    """A handler answering the n-th request on a connection with ``answers[n]`` (the last
    one for any after), then waiting for the client to go."""

    def make(upstream: RawUpstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for n in range(20):
                await upstream.request(reader)
                writer.write(answers[min(n, len(answers) - 1)])
                await writer.drain()
            await reader.read()

        return handler

    return make


@asynccontextmanager
async def upstream_of(
    make: Callable[[RawUpstream], Handler],
) -> AsyncIterator[tuple[RawUpstream, URL]]:
    box: list[RawUpstream] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await make(box[0])(reader, writer)

    async with raw(handler) as (upstream, url):
        box.append(upstream)
        yield upstream, url


async def fetch(wire: UpstreamWire) -> tuple[int, bytes]:
    answer = await wire.request("POST", "/v1/audio/speech", speech_headers(), BODY)
    return answer.status, await body_of(answer)


# Answers llhttp refuses (aiohttp's client, lenient on responses, took those marked so).
REFUSED = {
    "conflicting Content-Length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nokabc",
        "Duplicate Content-Length",
    ),
    "repeated Content-Length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        "Duplicate Content-Length",
    ),
    "Content-Length and chunks": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        "Transfer-Encoding can't be present with Content-Length",
    ),
    "a signed Content-Length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        "Content-Length",
    ),
    "a chunk size that overflows": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 20 + b"\r\nok\r\n",
        "overflow",
    ),
    "obs-fold (aiohttp: joined)": (
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
        "whitespace",
    ),
    "a space before the colon (aiohttp: a 'Content-Length ' header)": (
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        "header field char",
    ),
    "a control byte in a value (aiohttp: kept)": (
        b"HTTP/1.1 200 OK\r\nX-V: a\x01b\r\nContent-Length: 2\r\n\r\nok",
        "header value char",
    ),
    "bare LF line ends (aiohttp: taken)": (
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        "CR",
    ),
    "HTTP/0.9: a body and no head": (b"ID3 audio bytes\r\n\r\n", "HTTP/"),
    "status 000 (aiohttp: status 0)": (
        b"HTTP/1.1 000 X\r\nContent-Length: 2\r\n\r\nok",
        "not an HTTP status",
    ),
    "status 099 (aiohttp: status 99)": (
        b"HTTP/1.1 099 X\r\nContent-Length: 2\r\n\r\nok",
        "not an HTTP status",
    ),
    "101 Switching Protocols (aiohttp: a 101 answer)": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        "switched protocols",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_an_answer_llhttp_refuses_is_a_wire_error_and_its_connection_ends(
    case: str,
) -> None:
    answer, message = REFUSED[case]
    async with upstream_of(answering(answer)) as (_, url):
        wire = wire_to(url)
        with pytest.raises(WireError, match=message):
            await fetch(wire)
        assert wire.idle == 0
        await eventually(lambda: wire.open == 0, what="refused answer's connection left open")


async def test_chunk_extensions_and_trailers_are_read_past_and_the_connection_kept() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        b'2;name=value;q="quoted"\r\nok\r\n0;last\r\nX-Checksum: 1234\r\n\r\n'
    )
    async with upstream_of(answering(chunked, OK % (6, b"second"))) as (upstream, url):
        wire = wire_to(url)
        answer = await wire.request("POST", "/x", speech_headers(), BODY)
        assert await body_of(answer) == b"ok"
        assert "X-Checksum" not in answer.headers  # trailers never become headers
        assert wire.idle == 1
        assert await fetch(wire) == (200, b"second")
        assert upstream.connections == 1
        await wire.close()


async def test_http_1_0_answers_are_reused_only_when_they_ask_for_it() -> None:
    kept = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    plain = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with upstream_of(answering(kept, plain, OK % (1, b"3"))) as (upstream, url):
        wire = wire_to(url)
        assert await fetch(wire) == (200, b"ok")
        assert wire.idle == 1
        assert await fetch(wire) == (200, b"ok")
        assert wire.idle == 0  # HTTP/1.0 without keep-alive: closed after
        assert upstream.connections == 1
        await wire.close()


async def test_a_204_with_a_body_is_empty_and_its_body_never_reaches_the_next_request() -> None:
    smuggled = b"HTTP/1.1 204 No Content\r\nContent-Length: 30\r\n\r\n" + OK % (8, b"SMUGGLED")
    async with upstream_of(answering(smuggled, OK % (6, b"second"))) as (upstream, url):
        wire = wire_to(url)
        assert await fetch(wire) == (204, b"")
        assert wire.idle == 0
        # a new connection, whose first answer is the 204 again: never the smuggled one
        assert await fetch(wire) == (204, b"")
        assert upstream.connections == 2
        await wire.close()


async def test_bytes_after_a_connection_close_answer_are_dropped() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok" + OK % (
        8,
        b"SMUGGLED",
    )
    async with upstream_of(answering(closing)) as (upstream, url):
        wire = wire_to(url)
        assert await fetch(wire) == (200, b"ok")
        assert wire.idle == 0
        assert await fetch(wire) == (200, b"ok")
        assert upstream.connections == 2
        await wire.close()


async def test_an_upstream_that_closes_after_the_head_cuts_the_answer() -> None:
    async def head_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        await writer.drain()

    async with raw(head_only) as (upstream, url):
        wire = wire_to(url)
        with pytest.raises(WireError, match="before the end"):
            await fetch(wire)
        await eventually(lambda: wire.open == 0, what="cut connection left open")


async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes,
                  piece: bytes, upstream: RawUpstream) -> None:  # fmt: skip
    await upstream.request(reader)
    writer.write(first)
    for _ in range(4 * MAX_HEAD_BYTES // len(piece)):  # 4 times the bound at most
        writer.write(piece)
        await writer.drain()
    await reader.read()


@pytest.mark.parametrize(
    ("first", "piece"),
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nX-Long: ", b"a" * 4096, id="one endless header"),
        pytest.param(b"HTTP/1.1 200 OK\r\n", b"X-Many: aaaaaaaaaaaaaaaa\r\n", id="many headers"),
        pytest.param(b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", id="a 103 flood"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: ",
            b"t" * 4096,
            id="an endless trailer",
        ),
    ],
)
async def test_an_endless_head_or_trailer_is_cut_at_a_bound_not_held_in_memory(
    first: bytes, piece: bytes
) -> None:
    """llhttp bounds no header block; without a bound of ours the proxy would hold whatever
    the upstream sends until the read or total timeout (aiohttp's client bounded each line
    at 8 KiB, and never the number of 1xx answers)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await endless(reader, writer, first, piece, upstream)

    async with raw(handler) as (upstream, url):
        wire = wire_to(url, read_timeout=30.0, total_timeout=30.0)
        with pytest.raises(WireError, match="too large"):
            async with asyncio.timeout(10):  # the bound, long before any timeout
                await fetch(wire)
        await eventually(lambda: wire.open == 0, what="oversized answer's connection left open")


async def test_a_head_below_the_bound_with_its_body_in_the_same_read_is_whole() -> None:
    filler = b"X-Pad: " + b"p" * 1000 + b"\r\n"
    head = b"HTTP/1.1 200 OK\r\n" + filler * (MAX_HEAD_BYTES // len(filler) - 2)
    audio = b"a" * (MAX_HEAD_BYTES * 2)
    answer = head + b"Content-Length: %d\r\n\r\n" % len(audio) + audio
    async with upstream_of(answering(answer)) as (_, url):
        wire = wire_to(url)
        assert await fetch(wire) == (200, audio)
        assert wire.idle == 1
        await wire.close()


async def test_a_connection_whose_reads_paused_at_its_answers_end_is_pooled_reading() -> None:
    """The last read took the body past the high-water mark (reads paused), and the reader
    gave the answer back without taking it: the next request on that connection must
    still hear its answer."""
    audio = b"x" * ((1 << 20) + 1)  # the high-water mark is crossed by the last byte only
    async with upstream_of(answering(OK % (len(audio), audio), OK % (4, b"next"))) as (
        upstream,
        url,
    ):
        wire = wire_to(url, read_timeout=2.0)
        answer = await wire.request("POST", "/x", speech_headers(), BODY)
        await eventually(lambda: answer.ended, what="the body never arrived")
        answer.release()
        assert wire.idle == 1
        assert await fetch(wire) == (200, b"next")
        assert upstream.connections == 1
        await wire.close()


async def test_an_answer_before_the_request_was_written_leaves_the_connection_unpooled() -> None:
    """An upstream that answers after the head, reading no body, and keeps the connection:
    the rest of the body would be the start of the next request it reads."""
    body = b"a" * (32 << 20)  # more than loopback's socket buffers hold

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader, body=False)
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()
        await asyncio.sleep(5)  # holds the body unread, while the client decides

    async with raw(early) as (upstream, url):
        wire = wire_to(url)
        answer = await wire.request("POST", "/x", speech_headers(), body)
        assert answer.status == 413 and await body_of(answer) == b"big"
        assert wire.idle == 0
        await eventually(lambda: wire.open == 0, what="half-written connection left open")
        await wire.close()


async def test_a_reader_that_leaves_mid_body_closes_the_connection() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
        await writer.drain()
        await reader.read()

    async with raw(slow) as (upstream, url):
        wire = wire_to(url)
        answer = await wire.request("POST", "/x", speech_headers(), BODY)
        seen = asyncio.Event()

        async def read() -> None:
            async with answer:
                async for _ in answer.content.iter_any():
                    seen.set()

        task = asyncio.ensure_future(read())
        await asyncio.wait_for(seen.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert wire.idle == 0
        await eventually(lambda: wire.open == 0, what="abandoned connection left open")


async def test_concurrent_requests_each_get_their_own_connection_and_answer() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(5):
            request = await upstream.request(reader)
            name = request.split(b"X-Id: ", 1)[1].split(b"\r\n", 1)[0]
            writer.write(OK % (len(name), name))
            await writer.drain()
        await reader.read()

    async with raw(echo) as (upstream, url):
        wire = wire_to(url)

        async def one(n: int) -> bytes:
            sent = speech_headers()
            sent["X-Id"] = f"id-{n}"
            return await body_of(await wire.request("POST", "/x", sent, BODY))

        for _ in range(2):
            got = await asyncio.gather(*(one(n) for n in range(8)))
            assert got == [f"id-{n}".encode() for n in range(8)]
        assert upstream.connections == 8 and wire.idle == 8
        await wire.close()
        await eventually(lambda: wire.open == 0, what="connections left open after close")


async def test_non_ascii_header_values_go_out_as_utf8_and_surrogates_never_go_out() -> None:
    async with upstream_of(answering(OK % (2, b"ok"))) as (upstream, url):
        wire = wire_to(url)
        sent = speech_headers()
        sent["X-Note"] = "café ☕"
        await body_of(await wire.request("POST", "/x", sent, BODY))
        assert "X-Note: café ☕".encode() in upstream.requests[0]
        sent["X-Note"] = "\udcff"  # what aiohttp's server makes of a byte that is not UTF-8
        with pytest.raises(ValueError):
            await wire.request("POST", "/x", sent, BODY)
        assert len(upstream.requests) == 1
        await wire.close()


# Through a real proxy: what the client gets, and that nothing is stored.


@asynccontextmanager
async def proxy_before(
    make_proxy: ProxyFactory, make: Callable[[RawUpstream], Handler], **settings: Any
) -> AsyncIterator[tuple[RawUpstream, Any]]:
    async with upstream_of(make) as (upstream, url):
        client = await make_proxy(str(url), client_auth="none", **settings)
        yield upstream, client


BROKEN = {
    "not HTTP": (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", 502, "protocol"),
    "status 000": (b"HTTP/1.1 000 X\r\nContent-Length: 2\r\n\r\nok", 502, "protocol"),
    "a 101": (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", 502, "protocol"),
    "conflicting lengths": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nokabc",
        502,
        "protocol",
    ),
    "a huge head": (
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * (MAX_HEAD_BYTES + 10) + b"\r\n\r\n",
        502,
        "protocol",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
async def test_a_broken_answer_is_a_json_error_and_never_stored(
    make_proxy: ProxyFactory, case: str
) -> None:
    answer, status, kind = BROKEN[case]
    async with proxy_before(make_proxy, answering(answer)) as (upstream, client):
        for attempt in (1, 2):  # the second reaches the upstream again: nothing was stored
            reply = await client.post("/v1/audio/speech", json=speech_body("hola"))
            assert reply.status == status
            assert reply.content_type == "application/json"
            error = await reply.json()
            assert error["error"]["upstream_error"] == kind, error
            assert "fwd=miss" in reply.headers["Cache-Status"], reply.headers["Cache-Status"]
            assert "stored" not in reply.headers["Cache-Status"]
            assert reply.headers["X-Cache"] == "MISS"  # as on every other answer of a miss
            assert len(upstream.requests) == attempt


def once(answer: bytes) -> Callable[[RawUpstream], Handler]:
    """A handler answering one request with ``answer``, then closing."""

    def make(upstream: RawUpstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await upstream.request(reader)
            writer.write(answer)
            await writer.drain()

        return handler

    return make


async def test_a_body_cut_short_closes_the_clients_connection_and_is_not_stored(
    make_proxy: ProxyFactory,
) -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: 100\r\n\r\nRIFF"
    async with proxy_before(make_proxy, once(cut)) as (upstream, client):
        for attempt in (1, 2):
            reply = await client.post("/v1/audio/speech", json=speech_body("hola"))
            assert reply.status == 200  # its head (and Cache-Status) went before the cut
            with pytest.raises(aiohttp.ClientPayloadError):
                await reply.read()
            assert len(upstream.requests) == attempt


async def test_an_upstream_that_never_answers_is_a_504_json_error(
    make_proxy: ProxyFactory,
) -> None:
    def silent(upstream: RawUpstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await upstream.request(reader)
            await reader.read()

        return handler

    async with proxy_before(make_proxy, silent, upstream_read_timeout_seconds=0.3) as (_, client):
        reply = await client.post("/v1/audio/speech", json=speech_body("hola"))
        assert reply.status == 504
        assert (await reply.json())["error"]["upstream_error"] == "timeout"


async def test_an_odd_status_or_a_header_not_in_utf8_is_relayed_not_a_500(
    make_proxy: ProxyFactory,
) -> None:
    """As with aiohttp's client: a status llhttp takes (999) is relayed and not stored; a
    header value that is not UTF-8 is carried as lone surrogates and does not break the
    answer or its storing."""
    odd = b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok"
    async with proxy_before(make_proxy, once(odd)) as (upstream, client):
        for attempt in (1, 2):
            reply = await client.post("/v1/audio/speech", json=speech_body("hola"))
            assert (reply.status, await reply.read()) == (999, b"ok")
            assert len(upstream.requests) == attempt
    audio = b"RIFF" + b"\x00" * 40
    latin = (
        b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nX-Voice-Name: Ren\xe9e\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(audio), audio)
    )
    async with proxy_before(make_proxy, once(latin)) as (upstream, client):
        reply = await client.post("/v1/audio/speech", json=speech_body("hola"))
        assert (reply.status, await reply.read()) == (200, audio)


async def test_a_client_header_not_in_utf8_is_a_400_naming_it(make_proxy: ProxyFactory) -> None:
    async with proxy_before(make_proxy, once(OK % (2, b"ok"))) as (upstream, client):
        port = client.server.port
        assert port is not None
        body = json.dumps(speech_body("hola")).encode()
        request = (
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nX-Note: caf\xe9\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        reply = await raw_request(port, request)
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), reply[:200]
        assert json.loads(payload)["error"]["field"] == "header:X-Note"
        assert upstream.requests == []


async def test_a_fill_abandoned_mid_body_closes_its_upstream_connection(
    make_proxy: ProxyFactory,
) -> None:
    closed = asyncio.Event()

    def stalls(upstream: RawUpstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await upstream.request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: 1000\r\n\r\n"
            )
            writer.write(b"RIFF" + b"\x00" * 96)
            await writer.drain()
            await reader.read()  # until the proxy lets go
            closed.set()

        return handler

    async with proxy_before(make_proxy, stalls, fill_continue_after_disconnect=False) as (
        upstream,
        client,
    ):
        wire = client.app[PROCESSOR].upstream.wire
        assert wire is not None and client.server.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(speech_request("hola"))
        await asyncio.wait_for(reader.readuntil(b"RIFF"), 5)
        writer.close()
        await asyncio.wait_for(closed.wait(), 5)
        await eventually(lambda: wire.open == 0 and wire.idle == 0, what="connection kept")
        assert len(upstream.requests) == 1


async def test_a_clients_framing_headers_never_reach_the_upstream(
    make_proxy: ProxyFactory,
) -> None:
    """A client that sends its body chunked, with framing and hop-by-hop headers of its
    own: the upstream gets one Content-Length (ours) and none of the client's framing, so
    no request can be smuggled behind this one on the pooled connection."""
    async with proxy_before(make_proxy, answering(OK % (2, b"ok"))) as (upstream, client):
        assert client.server.port is not None
        body = json.dumps(speech_body("hola")).encode()
        request = (
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close, Content-Length\r\nTE: trailers\r\nUpgrade: h2c\r\n"
            b"Expect: 100-continue\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(request)
        reply = await asyncio.wait_for(reader.read(), 5)  # until the proxy closes
        writer.close()
        assert reply.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), reply[:300]
        (sent,) = upstream.requests
        head = sent.split(b"\r\n\r\n", 1)[0].lower()
        assert head.count(b"\r\ncontent-length: ") == 1
        for name in (b"transfer-encoding", b"connection", b"te", b"upgrade", b"expect"):
            assert b"\r\n" + name + b":" not in head, name
        assert sent.endswith(b"\r\n\r\n" + body)
