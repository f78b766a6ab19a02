"""HTTP/1.1 on a raw socket: requests written byte by byte, answers read back exactly as
they came (framed by their Content-Length), for tests of what goes on the wire."""

from __future__ import annotations

import asyncio
import json

from tests.support.speech import speech_body

UNSTABLE = {"date", "x-request-id", "age", "cache-status", "cache-control"}


def speech_request(
    text: str, *, version: str = "1.1", extra: str = "", method: str = "POST"
) -> bytes:
    body = json.dumps(speech_body(text)).encode()
    head = (
        f"{method} /v1/audio/speech HTTP/{version}\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


class Answer:
    def __init__(self, status_line: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status_line = status_line
        self.headers = headers
        self.body = body

    def get(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"{name} appears {len(values)} times"
        return values[0] if values else None

    def stable(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers if k.lower() not in UNSTABLE}


async def read_answer(reader: asyncio.StreamReader, *, head_only: bool = False) -> Answer:
    """One HTTP/1.x answer framed by its Content-Length, exactly as it came."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = raw[:-4].decode().split("\r\n")
    headers = [(k, v.lstrip()) for k, _, v in (line.partition(":") for line in lines)]
    answer = Answer(status_line, headers, b"")
    length = answer.get("Content-Length")
    assert length is not None, raw
    if not head_only:
        answer.body = await asyncio.wait_for(reader.readexactly(int(length)), 5)
    return answer


async def exchange(port: int, *requests: bytes) -> list[Answer]:
    """Send ``requests`` back to back on one connection (pipelined); read their answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(requests))
        await writer.drain()
        return [
            await read_answer(reader, head_only=request.startswith(b"HEAD "))
            for request in requests
        ]
    finally:
        writer.close()
