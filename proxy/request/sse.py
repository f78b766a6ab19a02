"""Speech events: an SSE request answered from its entry, and an SSE miss made into one.

A request asking for speech events (OpenAI's ``stream_format: "sse"``) has the key of the
same request without it (:class:`proxy.core.routes.RouteRule` leaves the field out), so
the two share one entry: the audio bytes. Only the form of the answer differs:

- a hit is the entry's audio encoded as delta events, then the done event with the usage
  stored with the entry (:func:`events_answer`);
- a miss passes the upstream's events to the client as they come; once they have all
  arrived they are decoded (:func:`entry_of`) and the audio is validated and stored like
  any other, with the usage kept beside it, never replayed to plain requests.

An SSE miss and a plain miss for one entry do not share a fill: the fill's key names the
form of the answer (:func:`flight_key`), since its bytes are passed to every reader as they
are. Each makes its own upstream call, and both store the same entry. A replica
following another's SSE fill gets that fill's events; one that wins the lock does not
settle for an entry stored meanwhile (it would hold audio, not events): it calls the
upstream.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from ..core.keys import CacheKey
from ..core.media import base_type
from ..core.outcomes import CacheStatus
from ..core.routes import SpeechRequest
from ..core.sse import EVENT_STREAM, USAGE_HEADER, decode_events, encode_events, media_type_of
from ..store.service import CachedAudio

# Where OpenAI's body names the audio format the events carry.
FORMAT_FIELD = "json:response_format"


@dataclass(frozen=True, slots=True)
class StoredForm:
    """What an SSE miss stores: the audio, its media type and the headers kept with it."""

    audio: bytes
    media_type: str
    headers: list[tuple[str, str]]


def audio_type(speech: SpeechRequest) -> str:
    """The media type of the audio a speech-events request asks for ("" when unknown:
    nothing is stored, as no sniffing can confirm the audio)."""
    return media_type_of(speech.params.get(FORMAT_FIELD)) or ""


def flight_key(key: CacheKey) -> CacheKey:
    """The fill key of an SSE miss: apart from the plain request's fill for the entry."""
    return key.variant("sse")


def is_events(content_type: str) -> bool:
    return base_type(content_type) == EVENT_STREAM


def entry_of(body: bytes, media_type: str, headers: Sequence[tuple[str, str]]) -> StoredForm | str:
    """The entry a whole event stream makes, or why it makes none: ``sse_malformed``
    (not speech events), ``sse_incomplete`` (no done event)."""
    decoded = decode_events(body)
    if decoded.problem is not None:
        return "sse_malformed"
    if not decoded.done:
        return "sse_incomplete"
    kept = [(n, v) for n, v in headers if n.lower() != USAGE_HEADER]
    if decoded.usage:
        kept.append((USAGE_HEADER, decoded.usage))
    return StoredForm(decoded.audio, media_type, kept)


def events_answer(cached: CachedAudio, status: CacheStatus, location: str) -> web.Response:
    """A stored entry as the upstream's speech events. No validators or ranges: they
    would describe the audio file, not this stream."""
    now_ms = int(time.time() * 1000)
    ttl_s = max(0, (cached.expires_ms - now_ms) // 1000)
    if status.hit:
        status = status.but(ttl=ttl_s)
    body = b"".join(encode_events(cached.audio, cached.sse_usage))
    response = web.Response(status=200, body=body)
    for name, value in cached.headers:
        response.headers.add(name, value)
    response.headers["Content-Type"] = EVENT_STREAM
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Age"] = str(max(0, (now_ms - cached.created_ms) // 1000))
    response.headers["Cache-Status"] = status.render()
    response.headers["X-Cache"] = status.x_cache
    response.headers["X-Audio-Cache-Key"] = cached.key.hex
    response.headers["Content-Location"] = location
    return response
