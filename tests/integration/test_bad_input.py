"""Hostile request shapes through a real proxy, Valkey and a recording loopback upstream:
each is answered with a 4xx JSON error naming the field (never a 500), or served correctly,
and nothing the proxy refuses ever reaches the upstream."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.support.loopback_upstream import fake_wav
from tests.support.proxies import ProxyClient, ProxyFactory, raw_request
from tests.support.servers import served
from tests.support.speech import SPEECH_PATH, speech_body
from tests.support.waits import until_stored

TOKEN = "bad-input-admin-token"


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """An upstream that records every request: audio for the speech route, JSON otherwise."""

    seen: list[Seen] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(
            Seen(request.method, request.rel_url.raw_path, dict(request.headers), body)
        )
        if request.path == SPEECH_PATH and request.method == "POST":
            payload = json.loads(body)  # a body still compressed fails here, and is seen
            audio = fake_wav(payload["input"], payload["voice"])
            return web.Response(body=audio, content_type="audio/wav")
        return web.json_response({"len": len(body)})


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:[\\s\\S]*}", rec.handle)
    async with served(app) as url:
        yield rec, url


def _error(raw: bytes) -> tuple[int, dict[str, Any]]:
    """The status and JSON error of a raw HTTP answer (the last one, after any 100)."""
    head, _, body = raw.rpartition(b"\r\n\r\n")
    head = head.rsplit(b"\r\n\r\n", 1)[-1]
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def _speech_bytes(text: str) -> bytes:
    return json.dumps(speech_body(text, voice="es")).encode()


async def _post_speech(
    client: ProxyClient, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    r = await client.post(
        SPEECH_PATH,
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    return r.status, await r.read(), dict(r.headers)


# -- Content-Encoding -----------------------------------------------------------------


async def test_gzip_and_plain_requests_share_one_entry(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory
) -> None:
    rec, url = recorder
    client = await make_proxy(url, client_auth="none")
    plain = _speech_bytes("Bienvenido al hotel")
    status, audio, headers = await _post_speech(
        client, gzip.compress(plain), {"Content-Encoding": "gzip"}
    )
    assert status == 200, audio
    assert audio == fake_wav("Bienvenido al hotel", "es")
    assert headers["X-Cache"] == "MISS"
    assert len(rec.seen) == 1
    assert rec.seen[0].body == plain  # decoded, and sent without the header
    assert "Content-Encoding" not in rec.seen[0].headers
    r = await client.post(SPEECH_PATH, data=plain, headers={"Content-Type": "application/json"})
    if r.headers["X-Cache"] == "MISS":  # the first answer may still be being stored
        await until_stored(client, r)
        r = await client.post(SPEECH_PATH, data=plain, headers={"Content-Type": "application/json"})
    assert r.headers["X-Cache"] == "HIT"
    assert r.headers["X-Audio-Cache-Key"] == headers["X-Audio-Cache-Key"]
    assert await r.read() == audio
    again = await client.post(
        SPEECH_PATH,
        data=gzip.compress(plain),
        headers={"Content-Type": "application/json", "Content-Encoding": "GZIP"},
    )
    assert again.headers["X-Cache"] == "HIT"
    assert len(rec.seen) == 1


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(zlib.compress, id="deflate-zlib"),
        pytest.param(lambda b: zlib.compress(b, wbits=-zlib.MAX_WBITS), id="deflate-raw"),
    ],
)
async def test_deflate_speech_is_decoded(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory, encode: Any
) -> None:
    rec, url = recorder
    client = await make_proxy(url, client_auth="none")
    plain = _speech_bytes("Su habitación está lista")
    status, audio, _ = await _post_speech(client, encode(plain), {"Content-Encoding": "deflate"})
    assert status == 200, audio
    assert rec.seen[0].body == plain and "Content-Encoding" not in rec.seen[0].headers


async def test_gzip_pass_through_is_forwarded_decoded(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory
) -> None:
    rec, url = recorder
    client = await make_proxy(url)
    plain = b"x" * 5000
    twice = gzip.compress(gzip.compress(plain))
    r = await client.put("/other/upload", data=twice, headers={"Content-Encoding": "gzip, gzip"})
    assert r.status == 200, await r.text()
    assert await r.json() == {"len": 5000}
    assert rec.seen[0].body == plain
    assert "Content-Encoding" not in rec.seen[0].headers


def _bomb(decoded_mb: int) -> bytes:
    """A small gzip body that decodes to ``decoded_mb`` MB of zeros."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as f:
        block = bytes(1024 * 1024)
        for _ in range(decoded_mb):
            f.write(block)
    return out.getvalue()


@pytest.mark.parametrize("path", [SPEECH_PATH, "/other/upload"])
async def test_a_zip_bomb_is_a_413_without_decoding_it_whole(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory, path: str
) -> None:
    rec, url = recorder
    client = await make_proxy(url, max_request_body_kb=256)
    bomb = _bomb(64)
    assert len(bomb) < 256 * 1024  # under the limit as sent
    tracemalloc.start()
    try:
        r = await client.post(
            path,
            data=bomb,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        error = (await r.json())["error"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status == 413
    assert error["field"] == "body"
    assert peak < 16 * 1024 * 1024  # the 64 MB it decodes to were never held
    assert rec.seen == []


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, br", "x-custom"])
@pytest.mark.parametrize("path", [SPEECH_PATH, "/other/upload"])
async def test_unsupported_content_encoding_is_a_415(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory, coding: str, path: str
) -> None:
    rec, url = recorder
    client = await make_proxy(url)
    r = await client.post(path, data=b"\x1b\x00\x00", headers={"Content-Encoding": coding})
    assert r.status == 415
    assert (await r.json())["error"]["field"] == "header:Content-Encoding"
    assert "gzip" in r.headers["Accept-Encoding"]
    assert rec.seen == []


async def test_admin_routes_take_their_bodies_uncompressed(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory
) -> None:
    rec, url = recorder
    client = await make_proxy(url)  # no admin token: loopback callers are let in
    document = json.dumps({"requests": []}).encode()
    r = await client.post(
        "/admin/audio-cache/prefetch",
        data=gzip.compress(document),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status == 415
    assert (await r.json())["error"]["field"] == "header:Content-Encoding"
    assert rec.seen == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not gzip at all", id="garbage"),
        pytest.param(gzip.compress(_speech_bytes("hola"))[:-12], id="truncated"),
        pytest.param(gzip.compress(_speech_bytes("hola")) + b"trailing", id="trailing"),
    ],
)
async def test_a_body_that_is_not_gzip_is_a_400(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory, body: bytes
) -> None:
    rec, url = recorder
    client = await make_proxy(url)
    for path in (SPEECH_PATH, "/other/upload"):
        r = await client.post(path, data=body, headers={"Content-Encoding": "gzip"})
        assert r.status == 400, path
        assert (await r.json())["error"]["field"] == "body"
    assert rec.seen == []


# -- control characters in paths --------------------------------------------------------


async def test_control_characters_in_paths_are_a_400(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory
) -> None:
    rec, url = recorder
    client = await make_proxy(url)
    assert client.port is not None
    for code in [*range(0x20), 0x7F]:
        for prefix in ("/v1/audio/speech", "/other/a"):
            target = f"{prefix}%{code:02x}b"
            raw = await raw_request(
                client.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            status, error = _error(raw)
            assert (status, error["field"]) == (400, "path"), (target, raw[:300])
    assert rec.seen == []


@pytest.mark.parametrize("byte", [b"\x01", b"\x0b", b"\x7f", b"\x80", b"\xc3\xa9", b"\xff"])
async def test_raw_bytes_in_paths_never_reach_the_upstream(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory, byte: bytes
) -> None:
    rec, url = recorder
    client = await make_proxy(url)
    assert client.port is not None
    raw = await raw_request(client.port, b"GET /other/a" + byte + b"b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.split(b" ", 2)[1] == b"400", raw[:200]  # refused by the HTTP parser or by us
    if b"application/json" in raw:  # the pure-Python parser lets them through to the proxy
        assert _error(raw)[1]["field"] == "path"
    assert rec.seen == []


async def test_access_log_lines_cannot_be_forged(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory
) -> None:
    _, url = recorder
    client = await make_proxy(url)
    assert client.port is not None
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("proxy.access")
    old_level = access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    targets = [
        "/other/a%0aGET%20/forged%20200%20hit%20bytes=1%200ms%20id=x",
        "/other/a%0d%0aGET%20/forged",
        "/v1/audio/speech%0a",
        "/other/a%20200%20hit",
        "/other/%e2%80%a8x",
    ]
    try:
        for target in targets:
            await raw_request(client.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

        def lines() -> list[str]:
            return out.getvalue().splitlines()

        for _ in range(200):  # the access line is written after the answer is sent
            if len(lines()) >= len(targets):
                break
            await asyncio.sleep(0.01)
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    written = lines()
    assert len(written) == len(targets), written
    assert not any("forged" in line.split(" ")[1:2] for line in written)
    for line in written:
        method, _, status, *_ = line.split(" ")
        assert method == "GET" and status.isdigit(), line
        assert "\u2028" not in line and "\r" not in line
    assert written[0].split(" ")[1] == "/other/a%0AGET%20/forged%20200%20hit%20bytes=1%200ms%20id=x"


# -- slow bodies on pass-through --------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"Content-Length: 100\r\n\r\n" + b"a" * 50, id="content-length"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n" + b"32\r\n" + b"a" * 50, id="chunked"),
    ],
)
async def test_a_stalled_pass_through_body_is_a_408(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory, head: bytes
) -> None:
    rec, url = recorder
    client = await make_proxy(url, client_body_timeout_seconds=0.3)
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b"PUT /other/upload HTTP/1.1\r\nHost: x\r\n" + head)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)  # then the client stalls
    finally:
        writer.close()
    status, error = _error(answer)
    assert (status, error["field"]) == (408, "body")
    assert rec.seen == []


# -- Expect: 100-continue ----------------------------------------------------------------


async def _expecting(port: int, path: str, body: bytes, expect: str = "100-continue") -> bytes:
    """A request sent the way curl sends a large upload: headers, wait for 100, body. The
    answer as received (the interim one included)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: {expect}\r\n\r\n".encode()
        )
        await writer.drain()
        received = b""
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if head.startswith(b"HTTP/1.1 100"):
            writer.write(body)
            await writer.drain()
            received = head
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        fields = dict(
            line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if line
        )
        if fields.get("Transfer-Encoding") == "chunked":
            content = b""
            for _ in range(10_000):
                size = int(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5), 16)
                content += await asyncio.wait_for(reader.readexactly(size + 2), 5)
                if size == 0:
                    break
                content = content[:-2]  # the CRLF after each chunk
            return received + head + content[:-2]
        length = int(fields.get("Content-Length", "0"))
        return received + head + await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()


async def test_expect_100_continue_works_and_is_not_forwarded(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory
) -> None:
    rec, url = recorder
    client = await make_proxy(url, client_auth="none")
    assert client.port is not None
    body = _speech_bytes("Con gusto le ayudo")
    miss = await _expecting(client.port, SPEECH_PATH, body)
    assert miss.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), miss[:300]
    assert b"X-Cache: MISS" in miss
    assert miss.endswith(fake_wav("Con gusto le ayudo", "es"))
    hit = miss
    for _ in range(200):  # until the miss is stored
        hit = await _expecting(client.port, SPEECH_PATH, body)
        if b"X-Cache: HIT" in hit:
            break
        await asyncio.sleep(0.01)
    assert b"X-Cache: HIT" in hit and hit.endswith(fake_wav("Con gusto le ayudo", "es"))
    passed = await _expecting(client.port, "/other/upload", b'{"a": 1}')
    assert passed.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), passed[:300]
    assert passed.endswith(b'{"len": 8}')
    assert rec.seen and all("Expect" not in seen.headers for seen in rec.seen)


async def test_an_unsupported_expect_is_a_417(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory
) -> None:
    rec, url = recorder
    client = await make_proxy(url)
    assert client.port is not None
    for path in (SPEECH_PATH, "/other/upload", "/admin/audio-cache/prefetch"):
        answer = await _expecting(client.port, path, b"{}", expect="200-ok")
        status, error = _error(answer)
        assert (status, error["field"]) == (417, "header:Expect"), answer[:300]
    assert rec.seen == []


async def test_expect_with_a_body_over_the_limit_is_a_413_before_the_body(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory
) -> None:
    rec, url = recorder
    client = await make_proxy(url, max_request_body_kb=4)
    assert client.port is not None
    for path in (SPEECH_PATH, "/other/upload"):
        answer = await _expecting(client.port, path, b"a" * 10_000)
        status, error = _error(answer)
        assert (status, error["field"]) == (413, "body"), answer[:300]
        assert b"100 Continue" not in answer
    assert rec.seen == []


# -- admin paths after normalization ------------------------------------------------------

ADMIN_TRICKS = [
    "/admin%2Faudio-cache/stats",
    "/admin%2faudio-cache%2fstats",
    "/ADMIN/audio-cache/stats",
    "/Admin/audio-cache",
    "/admin;x/audio-cache/stats",
    "/admin%3Bx/audio-cache/stats",
    "//admin/audio-cache/stats",
    "/admin/./audio-cache",
    "/admin/%2e/audio-cache/stats",
    "/%61dmin/audio-cache/stats",
    "/%2561dmin/audio-cache/stats",
    "/v1/../admin/audio-cache/stats",
    "/admin%20/audio-cache/stats",
    "/admin",
    "/admin/",
]


async def _admin_tricks(port: int, headers: str = "") -> list[tuple[str, str, int, Any]]:
    out = []
    for target in ADMIN_TRICKS:
        for method in ("GET", "DELETE", "POST"):
            raw = await raw_request(
                port,
                f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{headers}\r\n".encode(),
            )
            head, _, body = raw.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            out.append((method, target, status, json.loads(body)))
    return out


async def test_admin_paths_never_reach_the_upstream(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory
) -> None:
    rec, url = recorder
    client = await make_proxy(url, env={"ADMIN_TOKEN": TOKEN})
    assert client.port is not None
    for method, target, status, body in await _admin_tricks(client.port):
        # Answered as the admin route it names (which wants the token), or not at all.
        assert status in (401, 404, 405), (method, target, status, body)
        assert "error" in body, (method, target)
    # With the token: the exact admin route works, the tricks still never go upstream.
    answers = await _admin_tricks(client.port, f"Authorization: Bearer {TOKEN}\r\n")
    for method, target, status, body in answers:
        assert status < 500, (method, target, status, body)
    assert rec.seen == []
    assert (await client.get("/other/thing")).status == 200  # the rest is forwarded
    assert [seen.raw_path for seen in rec.seen] == ["/other/thing"]


async def test_admin_paths_on_the_proxy_port_are_404_with_an_admin_port(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory
) -> None:
    rec, url = recorder
    client = await make_proxy(url, admin_port=1)  # only its presence matters here
    assert client.port is not None
    for method, target, status, body in await _admin_tricks(client.port):
        assert status == 404, (method, target, status, body)
        assert "error" in body
    assert rec.seen == []


# -- headers and sizes on pass-through ----------------------------------------------------


@pytest.mark.parametrize("path", [SPEECH_PATH, "/other/upload"])
async def test_invalid_utf8_in_a_header_value_is_a_400(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory, path: str
) -> None:
    rec, url = recorder
    client = await make_proxy(url, client_auth="none")
    assert client.port is not None
    body = _speech_bytes("Buenas noches")
    raw = await raw_request(
        client.port,
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
        + b"X-Note: caf\xe9 \xff\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body,
    )
    status, error = _error(raw)
    assert (status, error["field"]) == (400, "header:X-Note"), raw[:300]
    assert rec.seen == []
    # Valid UTF-8 (and Latin-1 text that happens to be valid UTF-8) is forwarded as sent.
    r = await client.post(path, data=body, headers={"X-Note": "café"})
    assert r.status == 200
    assert rec.seen[0].headers["X-Note"] == "café"


async def test_a_pass_through_body_over_the_limit_is_a_413(
    recorder: tuple[Recorder, str], make_proxy: ProxyFactory
) -> None:
    rec, url = recorder
    client = await make_proxy(url, max_request_body_kb=4)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"a" * 1000

    for data in (b"a" * 10_000, chunks()):
        r = await client.put("/other/upload", data=data)
        assert r.status == 413
        assert (await r.json())["error"]["field"] == "body"
    assert rec.seen == []
    r = await client.put("/other/upload", data=b"a" * 3000)
    assert (r.status, await r.json()) == (200, {"len": 3000})
