"""Read-your-writes: once a client has the whole answer to a miss, asking again is a hit,
on the same replica and on another one sharing the store (real Valkey, loopback upstream)."""

from __future__ import annotations

import uuid
from typing import Any


def _speech(n: int) -> dict[str, Any]:
    return {
        "model": "tts-1",
        "input": f"Sentence number {n}",
        "voice": "es",
        "response_format": "wav",
    }


async def test_a_miss_read_to_the_end_is_a_hit_at_once(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    client = await make_proxy(url)
    for n in range(20):
        first = await client.post("/v1/audio/speech", json=_speech(n))
        body = await first.read()
        assert first.headers["Cache-Status"] == "tts-cache; fwd=miss; stored"
        again = await client.post("/v1/audio/speech", json=_speech(n))
        assert again.headers["X-Cache"] == "HIT", (n, again.headers["Cache-Status"])
        assert await again.read() == body


async def test_another_replica_hits_once_the_answer_is_read(upstream: Any, make_proxy: Any) -> None:
    _, url = upstream
    prefix = f"ryw{uuid.uuid4().hex[:8]}"
    one = await make_proxy(url, prefix=prefix)
    other = await make_proxy(url, prefix=prefix)
    for n in range(10):
        first = await one.post("/v1/audio/speech", json=_speech(100 + n))
        body = await first.read()
        again = await other.post("/v1/audio/speech", json=_speech(100 + n))
        assert again.headers["X-Cache"] == "HIT", (n, again.headers["Cache-Status"])
        assert await again.read() == body
