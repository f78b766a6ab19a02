"""An upstream on a raw socket, for tests of the miss's wire (proxy.request.upstream_wire):
it reads requests off the connection and answers whatever bytes a test tells it to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from multidict import CIMultiDict
from yarl import URL

from proxy.request.upstream_wire import UpstreamWire, WireAnswer

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: %d\r\n\r\n%s"
BODY = b'{"model":"tts-1","voice":"alloy","input":"hola"}'


class RawUpstream:
    """A TCP server on 127.0.0.1 that answers each connection with ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def request(self, reader: asyncio.StreamReader, *, body: bool = True) -> bytes:
        """One request read off ``reader`` (framed by its Content-Length; with ``body``
        False, its head only)."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        data = head + (await reader.readexactly(length) if body else b"")
        self.requests.append(data)
        return data


@asynccontextmanager
async def raw(handler: Handler) -> AsyncIterator[tuple[RawUpstream, URL]]:
    upstream = RawUpstream(handler)
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield upstream, URL(f"http://127.0.0.1:{port}")
    finally:
        server.close()
        await server.wait_closed()


def wire_to(url: URL, **options: Any) -> UpstreamWire:
    timeouts = {"connect_timeout": 2.0, "read_timeout": 5.0, "total_timeout": 8.0}
    return UpstreamWire(url, **{**timeouts, **options})


def speech_headers() -> CIMultiDict[str]:
    return CIMultiDict({"Content-Type": "application/json", "Accept-Encoding": "identity"})


async def body_of(answer: WireAnswer) -> bytes:
    async with answer:
        return b"".join([chunk async for chunk in answer.content.iter_any()])
