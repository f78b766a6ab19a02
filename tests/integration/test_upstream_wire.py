"""What reaches the upstream: the query byte for byte, and the headers a rule keys on.

A loopback upstream records each raw request line (``request.raw_path``) and its headers;
requests reach the real proxy as raw bytes on a socket, so nothing re-encodes them first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from proxy.request.upstream import strip_hop_by_hop, upstream_query
from tests.support.loopback_upstream import fake_wav
from tests.support.proxies import ProxyFactory
from tests.support.servers import served


class Recorder:
    """An upstream that answers audio on the preset routes and JSON elsewhere, and keeps
    every raw request target and header set it received."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.headers: list[dict[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.answer)
        return app

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.targets.append(request.raw_path)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        await request.read()
        if request.path.startswith("/other"):
            return web.json_response({"ok": True})
        return web.Response(body=fake_wav(request.query_string), content_type="audio/wav")


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    fake = Recorder()
    async with served(fake.app()) as url:
        yield fake, url


async def send_raw(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte (``head`` without the blank line); the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        extra = f"Content-Length: {len(body)}\r\n" if body else ""
        writer.write(head.encode("latin-1") + extra.encode() + b"\r\n" + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)  # Connection: close ends it
    finally:
        writer.close()
    top, _, payload = raw.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, payload


def get(target: str, *extra: str) -> str:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *extra]
    return "".join(line + "\r\n" for line in lines)


@pytest.mark.parametrize(
    "query",
    ["text=Caf%C3%A9&speaker_id=p225",
     "text=caf%c3%a9&speaker_id=p225",  # lower-case escapes stay lower-case
     "text=a+b%20c%2Bd&speaker_id=p%3D1&empty=&flag",
     "speaker_id=p225&text=Caf%C3%A9&x=1&x=%E2%82%AC"],
)  # fmt: skip
async def test_a_get_rule_query_reaches_the_upstream_byte_for_byte(
    recorder: Any, make_proxy: ProxyFactory, query: str
) -> None:
    fake, url = recorder
    client = await make_proxy(url)
    assert client.port is not None
    status, headers, _ = await send_raw(client.port, get(f"/api/tts?{query}"))
    assert status == 200 and headers["x-cache"] == "MISS"
    assert fake.targets == [f"/api/tts?{query}"]


async def test_cafe_in_a_get_query_reaches_the_upstream_as_utf8_escapes(
    recorder: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = recorder
    client = await make_proxy(url)
    # The way any HTTP client sends it (aiohttp's encodes 'é' as %C3%A9).
    response = await client.get("/api/tts", params={"text": "Café", "speaker_id": "p225"})
    assert response.status == 200 and await response.read()
    assert fake.targets == ["/api/tts?text=Caf%C3%A9&speaker_id=p225"]
    again = await client.get("/api/tts", params={"text": "Café", "speaker_id": "p225"})
    assert again.headers["X-Cache"] == "HIT"


async def test_pass_through_keeps_the_query_byte_for_byte(
    recorder: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = recorder
    client = await make_proxy(url)
    assert client.port is not None
    target = "/other/x%2Fy?text=Caf%C3%A9&q=a+b%2b&sig=AbC%3D%3d"
    status, headers, body = await send_raw(client.port, get(target))
    assert status == 200 and headers["x-cache"] == "BYPASS"
    assert json.loads(body) == {"ok": True}
    assert fake.targets == [target]


async def test_a_speech_post_keeps_its_query(recorder: Any, make_proxy: ProxyFactory) -> None:
    fake, url = recorder
    client = await make_proxy(url)
    assert client.port is not None
    target = "/v1/text-to-speech/v1?output_format=mp3_44100_128&note=caf%C3%A9"
    head = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        "Content-Type: application/json\r\n"
    )
    status, _, _ = await send_raw(client.port, head, b'{"text": "Hola", "model_id": "m"}')
    assert status == 200
    assert fake.targets == [target]


def test_upstream_query_encodes_only_what_cannot_stand_in_a_request_line() -> None:
    assert upstream_query("text=Caf%C3%A9&a=%2b+b") == "text=Caf%C3%A9&a=%2b+b"
    assert upstream_query("") == ""
    assert upstream_query("t=Café") == "t=Caf%C3%A9"
    assert upstream_query("t=a b#c\r\nX: 1") == "t=a%20b%23c%0D%0AX:%201"


async def test_connection_cannot_strip_a_header_the_rule_keys_on(
    recorder: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = recorder
    client = await make_proxy(url, tenant_header="X-Tenant", tenant_header_trusted=True)
    assert client.port is not None
    body = b'{"model": "tts-1", "input": "Hola", "voice": "es"}'
    head = (
        "POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Connection: keep-alive, Accept, X-Tenant, X-Custom, close\r\n"
        "Content-Type: application/json\r\nAccept: audio/wav\r\nX-Tenant: blue\r\n"
        "X-Custom: kept\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
    )
    status, _, _ = await send_raw(client.port, head, body)
    assert status == 200
    (seen,) = fake.headers
    assert seen["accept"] == "audio/wav"
    assert seen["x-tenant"] == "blue"
    assert seen["x-custom"] == "kept"
    assert "keep-alive" not in seen and "te" not in seen


def test_strip_hop_by_hop_removes_the_standard_set_and_ignores_connection_tokens() -> None:
    headers = [
        ("Connection", "keep-alive, Accept, Content-Type, X-Api-Key"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Proxy-Connection", "keep-alive"),
        ("Host", "example"),
        ("Content-Length", "3"),
        ("Accept", "audio/mpeg"),
        ("Content-Type", "application/json"),
        ("X-Api-Key", "k"),
    ]
    kept = strip_hop_by_hop(headers)
    assert sorted(kept.items()) == [
        ("Accept", "audio/mpeg"),
        ("Content-Type", "application/json"),
        ("X-Api-Key", "k"),
    ]
