"""Speech events decoded for the store and encoded for hits (pure)."""

from __future__ import annotations

import base64
import json

import pytest

from proxy.core.keys import CacheKey
from proxy.core.routes import PRESETS
from proxy.core.sse import (
    DONE,
    NO_USAGE,
    USAGE_HEADER,
    decode_events,
    encode_events,
    media_type_of,
)
from proxy.store.schema import stored_headers

AUDIO = bytes(range(256)) * 100  # 25 600 bytes: several deltas
USAGE = '{"input_tokens":3,"output_tokens":40,"total_tokens":43}'


def _event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def test_encoded_events_decode_to_the_same_audio_and_usage() -> None:
    events = list(encode_events(AUDIO, USAGE, chunk_bytes=8192))
    assert len(events) == 5  # four deltas (8 KiB, 8 KiB, 8 KiB, 1 KiB) and the done event
    decoded = decode_events(b"".join(events))
    assert decoded.problem is None and decoded.done
    assert decoded.audio == AUDIO
    assert json.loads(decoded.usage) == json.loads(USAGE)


def test_without_usage_the_done_event_has_openais_shape_with_no_tokens() -> None:
    last = list(encode_events(b"abc", ""))[-1]
    assert json.loads(last.removeprefix(b"data: ")) == {"type": DONE, "usage": dict(NO_USAGE)}
    bad = list(encode_events(b"abc", "not json"))[-1]
    assert json.loads(bad.removeprefix(b"data: "))["usage"] == dict(NO_USAGE)


def test_upstream_events_with_crlf_comments_and_split_data_lines_decode() -> None:
    piece = base64.b64encode(b"hello").decode()
    body = (
        b": a comment\r\n\r\n"
        + b'event: message\r\ndata: {"type":"speech.audio.delta",\r\ndata: "audio":"'
        + piece.encode()
        + b'"}\r\n\r\n'
        + b'data:{"type":"speech.audio.done","usage":{"total_tokens":1}}\n\n'
    )
    decoded = decode_events(body)
    assert decoded.problem is None and decoded.done
    assert decoded.audio == b"hello" and json.loads(decoded.usage) == {"total_tokens": 1}


def test_a_stream_without_the_done_event_is_not_done() -> None:
    body = _event({"type": "speech.audio.delta", "audio": base64.b64encode(b"x").decode()})
    decoded = decode_events(body)
    assert decoded.problem is None and not decoded.done


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"data: {nope\n\n", "not_json"),
        (_event({"type": "speech.audio.delta", "audio": "***"}), "bad_base64"),
        (_event({"type": "error", "error": {"message": "boom"}}), "unexpected_event:error"),
        (_event({"type": DONE}) + _event({"type": DONE}), "event_after_done"),
        (b"data: \xff\n\n", "not_utf8"),
    ],
)
def test_malformed_streams_name_their_problem(body: bytes, problem: str) -> None:
    decoded = decode_events(body)
    assert decoded.problem == problem and decoded.audio == b""


def test_media_types_follow_openais_response_format() -> None:
    assert media_type_of(None) == "audio/mpeg"  # OpenAI's default format
    assert media_type_of("wav") == "audio/wav" and media_type_of("pcm") == "audio/pcm"
    assert media_type_of("midi") is None and media_type_of(3) is None


def _openai(body: dict[str, object]) -> object:
    (rule,) = PRESETS["openai"]()
    return rule.describe(path_params={}, query="", headers={}, body=json.dumps(body).encode())


def test_stream_format_sse_and_audio_share_the_plain_requests_parameters() -> None:
    base = {"input": "Hi", "voice": "alloy", "model": "gpt-4o-mini-tts"}
    plain, sse, audio = (
        _openai(base),
        _openai({**base, "stream_format": "sse"}),
        _openai({**base, "stream_format": "audio"}),
    )
    assert plain is not None and sse is not None and audio is not None
    assert plain.params == sse.params == audio.params  # type: ignore[attr-defined]
    assert sse.sse and not plain.sse and not audio.sse  # type: ignore[attr-defined]
    other = _openai({**base, "stream_format": "chunks"})
    assert other.params["json:stream_format"] == "chunks"  # type: ignore[attr-defined]


def test_the_usage_is_stored_with_the_headers_but_never_replayed() -> None:
    stored = json.dumps([["X-Sample-Rate", "24000"], [USAGE_HEADER, USAGE]]).encode()
    assert stored_headers(stored) == ((("X-Sample-Rate", "24000"),), USAGE)
    assert stored_headers(b'[["X-Sample-Rate", "24000"]]') == ((("X-Sample-Rate", "24000"),), "")


def test_each_form_of_an_answer_fills_apart() -> None:
    key = CacheKey("a" * 64)
    assert key.variant("sse") != key and key.variant("sse") == CacheKey("a" * 64).variant("sse")
    assert key.variant("sse") != key.for_credential("sse")


def test_deltas_named_delta_as_some_compatible_servers_send_them_decode() -> None:
    piece = base64.b64encode(b"pcm!").decode()
    body = _event({"type": "speech.audio.delta", "delta": piece}) + _event({"type": DONE})
    decoded = decode_events(body)
    assert decoded.audio == b"pcm!" and decoded.done and decoded.usage == ""
