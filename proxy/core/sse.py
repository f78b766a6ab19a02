"""OpenAI's speech events (``stream_format: "sse"``), decoded for the store and encoded for hits.

Pure. The upstream answers ``text/event-stream`` with ``speech.audio.delta`` events, each
a base64 piece of the audio file of the request's ``response_format``, and one
``speech.audio.done`` event carrying the usage. The same audio, whole, is what the plain
request gets, so both share one entry: the store keeps the audio bytes, and an SSE hit is
encoded from them again.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

EVENT_STREAM = "text/event-stream"
DELTA = "speech.audio.delta"
DONE = "speech.audio.done"
# The entry's copy of the usage the upstream reported with the events; kept in the stored
# headers and split off when the entry is read, so that no plain hit ever replays it.
USAGE_HEADER = "x-audio-cache-sse-usage"
# Audio bytes per delta event on a hit: 8 KiB is about a third of a second of 24 kHz
# 16-bit PCM and 1 s of 64 kb/s MP3, small enough for a player to start at once.
HIT_CHUNK_BYTES = 8 * 1024
# The usage of an answer stored from a plain request: none was reported, and a hit bills
# no tokens. The shape stays OpenAI's, so SDKs that read it find every count.
NO_USAGE: Mapping[str, int] = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
# OpenAI's response_format names and the media type of the plain answer of each.
MEDIA_TYPES: Mapping[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # an Ogg Opus file
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
DEFAULT_FORMAT = "mp3"


@dataclass(frozen=True, slots=True)
class DecodedSpeech:
    """What a finished event stream held: the audio, whether it ended with the done event,
    its usage (compact JSON, "" when none), and the first problem found, if any."""

    audio: bytes
    done: bool
    usage: str
    problem: str | None = None


def media_type_of(response_format: Any) -> str | None:
    """The media type the audio of ``response_format`` has, None for an unknown format."""
    if response_format is None:
        response_format = DEFAULT_FORMAT
    return MEDIA_TYPES.get(response_format) if isinstance(response_format, str) else None


def _data_fields(body: bytes) -> Iterator[str]:
    """Each event's data (its ``data:`` lines joined with LF), in order (WHATWG SSE)."""
    text = body.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line.startswith("data:")]
        if lines:
            yield "\n".join(line[5:].removeprefix(" ") for line in lines)


def decode_events(body: bytes) -> DecodedSpeech:
    """The audio and usage of a whole speech event stream. Any event after the done event,
    an event that is not a JSON object, an unknown event type, or a delta that is not
    base64 is a problem: such a stream is not stored."""
    pieces: list[bytes] = []
    done = False
    usage = ""
    try:
        events = list(_data_fields(body))
    except UnicodeDecodeError:
        return DecodedSpeech(b"", False, "", "not_utf8")
    for data in events:
        if done:
            return DecodedSpeech(b"", False, "", "event_after_done")
        try:
            event = json.loads(data)
        except ValueError:
            return DecodedSpeech(b"", False, "", "not_json")
        kind = event.get("type") if isinstance(event, dict) else None
        # "audio" in OpenAI's reference; "delta" in some compatible servers.
        piece = event.get("audio", event.get("delta")) if kind == DELTA else None
        if isinstance(piece, str):
            try:
                pieces.append(base64.b64decode(piece, validate=True))
            except (binascii.Error, ValueError):
                return DecodedSpeech(b"", False, "", "bad_base64")
        elif kind == DONE:
            done = True
            if isinstance(event.get("usage"), dict):
                usage = json.dumps(event["usage"], separators=(",", ":"))
        else:
            return DecodedSpeech(b"", False, "", f"unexpected_event:{str(kind)[:40]}")
    return DecodedSpeech(b"".join(pieces), done, usage)


def _event(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def encode_events(
    audio: bytes, usage: str = "", *, chunk_bytes: int = HIT_CHUNK_BYTES
) -> Iterator[bytes]:
    """The speech events of ``audio``: deltas of ``chunk_bytes`` each, then the done event
    with ``usage`` (compact JSON as stored; :data:`NO_USAGE` when empty or unreadable)."""
    for start in range(0, len(audio), chunk_bytes):
        piece = base64.b64encode(audio[start : start + chunk_bytes]).decode("ascii")
        yield _event({"type": DELTA, "audio": piece})
    counts: Any = NO_USAGE
    if usage:
        try:
            counts = json.loads(usage)
        except ValueError:
            counts = NO_USAGE
        if not isinstance(counts, dict):
            counts = NO_USAGE
    yield _event({"type": DONE, "usage": counts})
