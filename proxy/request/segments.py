"""Segments: a missed text answered piece by piece, stored pieces at once, the rest synthesized.

Opt-in (``audio_cache_segments``: the setting, a route rule's ``segments``, a tenant
policy, or the ``X-Audio-Cache-Segments`` header). When the whole text misses, it is cut
into sentences or clauses (:mod:`proxy.core.segments`); each piece is the request the client
would have sent with that piece as its text, so its key is that request's key and a
one-sentence request shares its entry. Stored pieces are read; each missing piece is
synthesized on its own through the miss machinery (coalesced with other requests and
replicas, stored when admitted), at most ``segment_concurrency`` at once. Pieces go out in
order as soon as each is ready, joined by :mod:`proxy.core.joining`.

Only wav, mp3 and pcm answers are joined; for any other format, or a text that gives one
piece, the request is served whole by the usual path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web
from redis.exceptions import RedisError

from ..config.settings import Settings
from ..core.joining import Joinable, NotJoinable, PcmFormat, Splicer, joinable
from ..core.keys import CacheKey
from ..core.outcomes import segments_status
from ..core.policy import Directive
from ..core.request_json import BadJSON, load_object
from ..core.routes import RouteRule, SpeechRequest
from ..core.segments import SegmentMode, compile_patterns, parse_mode, split, storable
from ..observability.access_log import tag
from ..observability.metrics import METRICS
from ..store.service import AudioCacheService, EntryLabels
from .access import Caller
from .classify import Speech
from .errors import json_error
from .misses import Misses, Outgoing

log = logging.getLogger(__name__)

HEADER = "X-Audio-Cache-Segments"
# More pieces than this and the text is served whole: one answer, not a fan-out of calls.
MAX_PIECES = 64
# Request headers that want the whole stored answer (validators, ranges): served whole.
_WHOLE_ANSWER_HEADERS = ("Range", "If-None-Match", "If-Modified-Since")
# Where the answer's format is asked for, by the presets' APIs, and what each says.
_FORMAT_FIELDS = ("json:response_format", "query:output_format", "json:output_format")
_DEFAULT_FORMATS = {"openai": "mp3", "elevenlabs": "mp3", "elevenlabs-stream": "mp3"}


def requested_format(
    rule: RouteRule, params: Mapping[str, Any]
) -> tuple[Joinable, PcmFormat] | None:
    """The join a request's answers will need, from the format it asks for; None when
    its format has no join here (opus, aac, flac, ulaw...) or is not known."""
    value: Any = None
    for name in _FORMAT_FIELDS:
        if name in params:
            value = params[name]
            break
    if value is None:
        value = _DEFAULT_FORMATS.get(rule.name)
    if not isinstance(value, str):
        return None
    codec, _, rate = value.lower().partition("_")  # ElevenLabs: mp3_44100_128, pcm_16000
    if codec not in ("mp3", "wav", "pcm"):
        return None
    pcm = (
        PcmFormat(int(rate.split("_")[0])) if codec == "pcm" and rate[:1].isdigit() else PcmFormat()
    )
    return codec, pcm  # type: ignore[return-value]


def _with_text(rule: RouteRule, step: Speech, text: str) -> tuple[bytes, str] | None:
    """The request's body and query with its text field replaced; None where it lives
    somewhere this cannot rewrite (a path segment, a header)."""
    ref = rule.text
    if ref.source == "json":
        try:
            document = load_object(step.body.decode("utf-8"))
        except (BadJSON, UnicodeDecodeError):
            return None
        document[ref.name] = text
        return json.dumps(document, ensure_ascii=False).encode(), step.query
    if ref.source in ("query", "form"):
        raw = step.query if ref.source == "query" else step.body.decode("utf-8")
        pairs = [
            (k, text if k == ref.name else v) for k, v in parse_qsl(raw, keep_blank_values=True)
        ]
        encoded = urlencode(pairs)
        return (step.body, encoded) if ref.source == "query" else (encoded.encode(), step.query)
    return None


@dataclasses.dataclass
class _Piece:
    text: str  # what is synthesized: the piece without its surrounding whitespace
    key: CacheKey
    outgoing: Outgoing
    store: bool
    audio: bytes | None = None
    media_type: str = ""
    result: str = "miss"


class Segments:
    """Serves a missed speech request from its pieces, when segment caching is on for it."""

    def __init__(self, settings: Settings, service: AudioCacheService, misses: Misses) -> None:
        self.settings = settings
        self.service = service
        self.misses = misses
        self.tenants = settings.tenancy
        self.no_cache = compile_patterns(settings.segment_no_cache_patterns)
        self.default: SegmentMode = parse_mode(settings.audio_cache_segments) or "off"

    def mode(
        self, request: web.Request, rule: RouteRule, tenant: str
    ) -> SegmentMode | web.Response:
        """The request's segment mode: its header, else its tenant's, its route's, the cache's."""
        said = request.headers.get(HEADER)
        if said is not None:
            mode = parse_mode(said)
            if mode is None:
                return json_error(
                    400, f"{HEADER} must be off, sentence or clause", field=f"header:{HEADER}"
                )
            return mode
        policy = self.tenants.policy(tenant).audio_cache_segments
        return parse_mode(policy) or rule.segments or self.default

    async def serve(
        self,
        request: web.Request,
        step: Speech,
        caller: Caller,
        labels: EntryLabels,
        ttl: int,
        started: float,
        key_for: Any,
    ) -> web.StreamResponse | None:
        """The answer joined from pieces, or None for the whole-text path."""
        mode = self.mode(request, step.rule, step.described.tenant)
        if isinstance(mode, web.Response):
            return mode
        if (
            mode == "off"
            or step.directive is not Directive.USE
            or request.method not in ("GET", "POST")
            or any(h in request.headers for h in _WHOLE_ANSWER_HEADERS)
        ):
            return None
        fmt = requested_format(step.rule, step.described.speech.params)
        texts = split(step.described.speech.text, mode)
        if fmt is None or not 1 < len(texts) <= MAX_PIECES:
            return None
        pieces = self._pieces(request, step, texts, key_for)
        if pieces is None:
            return None
        await self._read_stored(pieces)
        missing = [p for p in pieces if p.audio is None]
        characters = sum(len(p.text) for p in missing)
        refused = await self.misses.access.charge(caller, step.described.tenant, characters)
        if refused is not None:
            return refused
        saved = sum(len(p.text) for p in pieces if p.audio is not None)
        if saved:
            METRICS.segment_characters_saved.inc(saved)
        limit = asyncio.Semaphore(self.settings.segment_concurrency)
        tasks: list[asyncio.Task[None] | None] = []

        def synthesize_missing() -> None:
            tasks.extend(
                asyncio.create_task(
                    self._synthesize(p, step.rule, labels, ttl, started, caller, limit)
                )
                if p.audio is None
                else None
                for p in pieces
            )

        try:
            return await self._stream(
                request, step, pieces, synthesize_missing, tasks, fmt, started
            )
        finally:
            for task in tasks:
                if task is not None and not task.done():
                    task.cancel()

    def _pieces(
        self, request: web.Request, step: Speech, texts: tuple[str, ...], key_for: Any
    ) -> list[_Piece] | None:
        namespace = self.tenants.namespace(step.described.tenant)
        pieces = []
        for raw in texts:
            text = raw.strip()
            rewritten = _with_text(step.rule, step, text)
            if rewritten is None or not text:
                return None
            body, query = rewritten
            speech: SpeechRequest = dataclasses.replace(step.described.speech, text=text)
            outgoing = Outgoing(
                method=request.method,
                path=request.rel_url.raw_path,
                query=query,
                headers=self.misses.upstream.outgoing_headers(
                    self.misses.access.forwarded(request.headers), identity=True
                ),
                body=body,
            )
            store = storable(text, self.no_cache)
            pieces.append(_Piece(text, key_for(speech, namespace), outgoing, store))
        return pieces

    async def _read_stored(self, pieces: list[_Piece]) -> None:
        """Every stored piece, read at once: one round trip's wait, not one per piece."""

        async def read(piece: _Piece) -> None:
            try:
                cached = self.service.hot_hit(piece.key)
                if cached is None:
                    cached, _ = await self.service.get_or_stale(piece.key, hot_tried=True)
            except RedisError as exc:
                log.warning("cache read failed for a segment: %s", exc)
                METRICS.redis_errors.labels("get").inc()
                cached = None
            if cached is not None:
                piece.audio, piece.media_type, piece.result = cached.audio, cached.media_type, "hit"

        await asyncio.gather(*(read(p) for p in pieces if p.store))

    async def _synthesize(
        self,
        piece: _Piece,
        rule: RouteRule,
        labels: EntryLabels,
        ttl: int,
        started: float,
        caller: Caller,
        limit: asyncio.Semaphore,
    ) -> None:
        async with limit:
            fill, leader = self.misses.start(
                rule,
                piece.key,
                piece.outgoing,
                labels,
                ttl,
                Directive.USE,
                started,
                credential=caller.credential,
                store=piece.store,
            )
            with fill.reader():
                await fill.wait_done()
        if fill.status != 200 or not fill.complete:
            piece.result = "failed"
            return
        piece.audio = fill.body()
        piece.media_type = dict((k.lower(), v) for k, v in fill.headers).get("content-type", "")
        collapsed = not leader or fill.origin != "upstream"
        piece.result = "one_off" if not piece.store else "coalesced" if collapsed else "miss"

    async def _stream(
        self,
        request: web.Request,
        step: Speech,
        pieces: list[_Piece],
        synthesize_missing: Callable[[], None],
        tasks: list[asyncio.Task[None] | None],
        fmt: tuple[Joinable, PcmFormat],
        started: float,
    ) -> web.StreamResponse | None:
        """Write the pieces in order. A leading stored piece goes out before any synthesis
        starts: the upstream calls' own work must not delay the first byte."""
        if pieces[0].audio is None:
            synthesize_missing()
        kind, pcm = fmt
        splicer = Splicer(kind, self.settings.segment_pause_ms, pcm)
        hits = sum(p.result == "hit" for p in pieces)
        status = segments_status(len(pieces), hits)
        response: web.StreamResponse | None = None
        for index, piece in enumerate(pieces):
            task = tasks[index] if tasks else None
            if task is not None:
                await task
            METRICS.segment_pieces.labels(piece.result).inc()
            if piece.audio is None or joinable(piece.media_type) != kind:
                if response is None:
                    if piece.audio is not None:
                        return None  # not the format it asked for: served whole instead
                    return json_error(502, "the upstream failed to synthesize a segment")
                break
            try:
                data = splicer.first(piece.audio) if index == 0 else splicer.then(piece.audio)
            except NotJoinable as exc:
                log.warning("segments of %s not joined: %s", step.described.key.hex[:12], exc)
                if response is None:
                    return None
                break
            if response is None:
                response = web.StreamResponse(status=200)
                response.content_type = piece.media_type.split(";")[0]
                response.headers["Cache-Status"] = status.render()
                response.headers["X-Cache"] = status.x_cache
                response.headers["X-Audio-Cache-Key"] = step.described.key.hex
                tag(request, response)
                await response.prepare(request)
                METRICS.time_to_first_byte.labels(step.rule.name).observe(
                    time.perf_counter() - started
                )
            await response.write(data)
            if not tasks:
                synthesize_missing()
        else:
            assert response is not None
            await response.write_eof()
            return response
        # A piece failed after the answer began: close, so the client sees it cut short.
        if request.transport is not None:
            request.transport.close()
        return response
