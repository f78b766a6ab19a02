"""What may be read and written: request directives and never-store checks."""

from __future__ import annotations

import pytest

from proxy.core.policy import (
    Directive,
    refusal_after_body,
    refusal_before_body,
    request_directive,
)

MAX = 1000
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt "


@pytest.mark.parametrize(
    ("headers", "directive"),
    [({}, Directive.USE), ({"cache-control": "no-store"}, Directive.BYPASS),
     ({"cache-control": "no-cache"}, Directive.REFRESH), ({"cache-control": "max-age=0"}, Directive.REFRESH),
     ({"cache-control": "max-age=60"}, Directive.USE), ({"pragma": "no-cache"}, Directive.REFRESH),
     ({"cache-control": "No-Store, no-cache"}, Directive.BYPASS)],
)  # fmt: skip
def test_request_directive(headers: dict[str, str], directive: Directive) -> None:
    assert request_directive(headers) is directive


@pytest.mark.parametrize(
    ("status", "headers", "reason"),
    [(200, {}, None), (206, {}, "status"), (201, {}, "status"), (404, {}, "status"), (500, {}, "status"),
     (200, {"cache-control": "no-store"}, "upstream_no_store"), (200, {"cache-control": "private"}, "upstream_no_store"),
     (200, {"content-encoding": "gzip"}, "content_encoding"), (200, {"content-length": "1001"}, "too_large")],
)  # fmt: skip
def test_refusal_before_body(status: int, headers: dict[str, str], reason: str | None) -> None:
    assert refusal_before_body(status=status, headers=headers, max_entry_bytes=MAX) == reason


@pytest.mark.parametrize(
    ("headers", "body", "complete", "reason"),
    [({"content-type": "audio/wav"}, WAV, True, None),
     ({"content-type": "audio/wav"}, b"RIFF", False, "truncated"),
     ({"content-type": "audio/wav"}, b"", True, "empty"),
     ({"content-type": "audio/wav", "content-length": "10"}, b"RIFF", True, "truncated"),
     ({"content-type": "audio/wav"}, b"x" * 1001, True, "too_large"),
     ({"content-type": "text/html"}, b"<html>", True, "not_audio"),
     ({"content-type": "application/json"}, b'{"a":1}', True, "not_audio"),
     ({"content-type": "application/octet-stream"}, b' {"error":1}', True, "not_audio"),
     ({"content-type": "application/octet-stream"}, b"ID3\x04", True, None),
     ({}, b"RIFF", True, "not_audio")],
)  # fmt: skip
def test_refusal_after_body(
    headers: dict[str, str], body: bytes, complete: bool, reason: str | None
) -> None:
    assert (
        refusal_after_body(headers=headers, body=body, complete=complete, max_entry_bytes=MAX)
        == reason
    )
