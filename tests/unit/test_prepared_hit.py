"""The bytes of a prepared hit (proxy.request.prepared_hit), built without a socket: the
head written once per entry, and the headers it refuses to write."""

from __future__ import annotations

import pytest

from proxy.request.prepared_hit import HitWire, UnsafeHeader


def test_a_prepared_hit_describes_itself() -> None:
    wire = HitWire([("X-Note", "fine")], 4)
    hit = wire.answer(wire.head(0, 60, 1_800_000_000), "rid-1", b"RIFF")
    assert repr(hit) == "<PreparedHit 200 4 bytes ready>"
    assert hit.prepared and hit.keep_alive and hit.content_length == 4
    assert hit.headers["X-Request-ID"] == "rid-1" and hit.headers["Content-Length"] == "4"
    with pytest.raises(RuntimeError):
        hit.content_length = 5


def test_a_wire_refuses_headers_it_cannot_write() -> None:
    with pytest.raises(UnsafeHeader):
        HitWire([("X-Note", "a\nb")], 10)
    with pytest.raises(UnsafeHeader):
        HitWire([("X-No\rte", "a")], 10)
    for control in ("\x00", "\x01", "\x1f", "\x7f"):
        with pytest.raises(UnsafeHeader):
            HitWire([("X-Note", f"a{control}b")], 10)
    with pytest.raises(UnsafeHeader):
        HitWire([("X-Note: sneaky", "a")], 10)
    assert b"X-Note: a\tb\r\n" in HitWire([("X-Note", "a\tb")], 10).head(0, 1, 0)
    wire = HitWire([("X-Note", "fine")], 10)
    first = wire.head(0, 60, 1_800_000_000)
    assert first.startswith(b"HTTP/1.1 200 OK\r\nX-Note: fine\r\nContent-Length: 10\r\n")
    assert b"Age: 0\r\nCache-Control: max-age=60\r\n" in first
    assert b"Cache-Status: tts-cache; hit; ttl=60\r\n" in first
    later = wire.head(1, 59, 1_800_000_001)
    assert b"Age: 1\r\nCache-Control: max-age=59\r\n" in later
    assert b"Date: Fri, 15 Jan 2027 08:00:01 GMT\r\n" in later
