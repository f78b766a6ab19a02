"""Segments: a missed text answered piece by piece, stored pieces at once, the rest synthesized.

Opt-in (``audio_cache_segments``: the setting, a route rule's ``segments``, a tenant
policy, or the ``X-Audio-Cache-Segments`` header). A text is cut into sentences or clauses
(:mod:`proxy.core.segments`) before it is looked up; each piece is the request the client
would have sent with that piece as its text, so its key is that request's key and a
one-sentence request shares its entry. The stored pieces are read in the whole text's
round trip; when the whole text misses, each missing piece is synthesized on its own
through the miss machinery (coalesced with other requests and replicas, stored when
admitted: not one-off, and missed ``segment_store_after_sightings`` times), at most
``segment_concurrency`` at once, or with ``segment_miss_mode: runs`` a run of missing
pieces is one upstream call and its pieces are rendered apart for the cache. Pieces go out
in order as soon as each is ready, joined by :mod:`proxy.core.joining`; a leading stored
piece is written before any synthesis starts.

Only wav, mp3 and pcm answers are joined; for any other format, or a text that gives one
piece, the request is served whole by the usual path."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Coroutine, Mapping
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
from ..core.routes import RouteRule
from ..core.segments import (
    MissMode,
    SegmentMode,
    compile_patterns,
    parse_mode,
    parts,
    split,
    storable,
)
from ..observability.access_log import tag
from ..observability.metrics import METRICS
from ..store.service import AudioCacheService, EntryLabels
from .access import Caller
from .classify import Speech
from .errors import json_error
from .fill import Fill
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
    raw: str  # the piece as cut, with the whitespace around it
    text: str  # what is synthesized: the piece without its surrounding whitespace
    key: CacheKey
    store: bool  # False: it looks one-off (a figure, an address...)
    audio: bytes | None = None
    media_type: str = ""
    result: str = "miss"
    not_stored: str | None = None  # why its synthesis is not stored


@dataclasses.dataclass
class _Part:
    """What is spliced in as one: a piece, or (``runs``) consecutive missing pieces that
    one upstream call synthesizes together."""

    pieces: list[_Piece]
    audio: bytes | None = None
    media_type: str = ""

    @property
    def text(self) -> str:
        return "".join(p.raw for p in self.pieces).strip()


@dataclasses.dataclass
class SegmentPlan:
    """A request to be answered from pieces, if its whole text misses."""

    fmt: tuple[Joinable, PcmFormat]
    pieces: list[_Piece]
    namespace: str


class Segments:
    """Serves a missed speech request from its pieces, when segment caching is on for it."""

    def __init__(self, settings: Settings, service: AudioCacheService, misses: Misses) -> None:
        self.settings = settings
        self.service = service
        self.misses = misses
        self.tenants = settings.tenancy
        self.no_cache = compile_patterns(settings.segment_no_cache_patterns)
        self.default: SegmentMode = parse_mode(settings.audio_cache_segments) or "off"
        self.miss_mode: MissMode = "runs" if settings.segment_miss_mode == "runs" else "pieces"
        self.sightings = settings.segment_store_after_sightings

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

    def plan(
        self, request: web.Request, step: Speech, key_for: Any
    ) -> SegmentPlan | web.Response | None:
        """The pieces of a request that may be answered from them (their keys only: their
        upstream requests are built when they miss), or None for the whole-text path."""
        mode = self.mode(request, step.rule, step.described.tenant)
        if not isinstance(mode, str):
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
        if _with_text(step.rule, step, texts[0]) is None:
            return None  # a body this cannot rewrite: each piece's request is built from it
        namespace = self.tenants.namespace(step.described.tenant)
        speech = step.described.speech
        pieces = []
        for raw in texts:
            text = raw.strip()
            if not text:
                return None
            key = key_for(dataclasses.replace(speech, text=text), namespace)
            pieces.append(_Piece(raw, text, key, storable(text, self.no_cache)))
        return SegmentPlan(fmt, pieces, namespace)

    def reads(self, plan: SegmentPlan) -> list[Coroutine[Any, Any, None]]:
        """A read of each storable piece, to be gathered with the whole text's lookup: the
        reads of one event-loop turn leave in one write, so all wait one round trip.
        Counted only once used (:meth:`serve`)."""
        return [self._read(p) for p in plan.pieces if p.store]

    async def _read(self, piece: _Piece) -> None:
        try:
            cached = await self.service.peek(piece.key)
        except RedisError as exc:
            log.warning("cache read failed for a segment: %s", exc)
            METRICS.redis_errors.labels("get").inc()
            cached = None
        if cached is not None:
            piece.audio, piece.media_type, piece.result = cached.audio, cached.media_type, "hit"

    async def serve(
        self,
        request: web.Request,
        step: Speech,
        plan: SegmentPlan,
        caller: Caller,
        labels: EntryLabels,
        ttl: int,
        started: float,
        key_for: Any,
    ) -> web.StreamResponse | None:
        """The answer joined from the plan's pieces (read by :meth:`reads`), or None
        for the whole-text path."""
        pieces = plan.pieces
        for piece in pieces:
            if piece.store:
                self.service.count_lookup(piece.key, hit=piece.audio is not None)
        missing = [p for p in pieces if p.audio is None]
        characters = sum(len(p.text) for p in missing)
        refused = await self.misses.access.charge(caller, step.described.tenant, characters)
        if refused is not None:
            return refused
        saved = sum(len(p.text) for p in pieces if p.audio is not None)
        if saved:
            METRICS.segment_characters_saved.inc(saved)
        grouped = [
            _Part([pieces[i] for i in indexes])
            for indexes in parts([p.audio is None for p in pieces], self.miss_mode)
        ]
        for part in grouped:
            if len(part.pieces) == 1 and part.pieces[0].audio is not None:
                part.audio, part.media_type = part.pieces[0].audio, part.pieces[0].media_type
        work = _Work(
            self, request, step, plan, caller, labels, ttl, started, key_for, grouped, missing
        )
        try:
            return await self._stream(request, step, work, plan.fmt)
        finally:
            work.cancel()

    async def _stream(
        self,
        request: web.Request,
        step: Speech,
        work: _Work,
        fmt: tuple[Joinable, PcmFormat],
    ) -> web.StreamResponse | None:
        """Write the parts in order. A leading stored piece goes out before any synthesis
        starts: the upstream calls' own work must not delay the first byte."""
        grouped = work.parts
        if grouped[0].audio is None:
            work.start()
        kind, pcm = fmt
        splicer = Splicer(kind, self.settings.segment_pause_ms, pcm)
        hits = sum(p.result == "hit" for p in work.plan.pieces)
        status = segments_status(len(work.plan.pieces), hits)
        response: web.StreamResponse | None = None
        for index, part in enumerate(grouped):
            await work.ready(index)
            for piece in part.pieces:
                METRICS.segment_pieces.labels(piece.result).inc()
            if part.audio is None or joinable(part.media_type) != kind:
                if response is None:
                    if part.audio is not None:
                        return None  # not the format it asked for: served whole instead
                    return json_error(502, "the upstream failed to synthesize a segment")
                break
            try:
                data = splicer.first(part.audio) if index == 0 else splicer.then(part.audio)
            except NotJoinable as exc:
                log.warning("segments of %s not joined: %s", step.described.key.hex[:12], exc)
                if response is None:
                    return None
                break
            if response is None:
                response = _Joined(status=200)
                response.content_type = part.media_type.split(";")[0]
                response.headers["Cache-Status"] = status.render()
                response.headers["X-Cache"] = status.x_cache
                response.headers["X-Audio-Cache-Key"] = step.described.key.hex
                tag(request, response)
                await response.prepare(request)
                await response.write(data)
                METRICS.time_to_first_byte.labels(step.rule.name).observe(
                    time.perf_counter() - work.started
                )
                work.start()  # a no-op when the first part had to be synthesized
                continue
            await response.write(data)
        else:
            assert response is not None
            await work.rendered()
            await response.write_eof()
            return response
        # A part failed after the answer began: close, so the client sees it cut short.
        if request.transport is not None:
            request.transport.close()
        return response


class _Joined(web.StreamResponse):
    """A joined answer: its headers leave with its first piece, in one write, not alone
    before it (aiohttp's stream responses send them at ``prepare``)."""

    _send_headers_immediately = False


class _Work:
    """The synthesis of one answer's missing parts: started once, awaited part by part."""

    def __init__(
        self,
        segments: Segments,
        request: web.Request,
        step: Speech,
        plan: SegmentPlan,
        caller: Caller,
        labels: EntryLabels,
        ttl: int,
        started: float,
        key_for: Any,
        grouped: list[_Part],
        missing: list[_Piece],
    ) -> None:
        self.segments = segments
        self.request = request
        self.step = step
        self.plan = plan
        self.caller = caller
        self.labels = labels
        self.ttl = ttl
        self.started = started
        self.key_for = key_for
        self.parts = grouped
        self.missing = missing
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.renders: list[asyncio.Task[None]] = []
        self.limit = asyncio.Semaphore(segments.settings.segment_concurrency)
        self.counted: asyncio.Future[None] | None = None
        self._headers: Any = None

    def start(self) -> None:
        if self.counted is not None:
            return
        self.counted = asyncio.ensure_future(self._count_sightings())
        for index, part in enumerate(self.parts):
            if part.audio is None:
                self.tasks[index] = asyncio.create_task(self._synthesize(part))

    async def ready(self, index: int) -> None:
        task = self.tasks.get(index)
        if task is not None:
            await task

    async def rendered(self) -> None:
        """Until the pieces a run synthesized for the answer are rendered for the cache."""
        if self.renders:
            await asyncio.gather(*self.renders, return_exceptions=True)

    def cancel(self) -> None:
        for task in (*self.tasks.values(), *self.renders):
            if not task.done():
                task.cancel()
        if self.counted is not None and not self.counted.done():
            self.counted.cancel()

    async def _count_sightings(self) -> None:
        """Which storable missing pieces are stored now: from their Nth miss on, counted
        across replicas (``segment_store_after_sightings``; 1 stores at the first)."""
        needed = self.segments.sightings
        counted = [p for p in self.missing if p.store]
        if needed <= 1 or not counted:
            return
        window = self.segments.settings.segment_sightings_window_seconds
        try:
            seen = await self.segments.service.count_sightings([p.key for p in counted], window)
        except RedisError as exc:  # the store is failing: store as at the first sighting
            log.warning("segment sightings not counted: %s", exc)
            METRICS.redis_errors.labels("set").inc()
            return
        for piece, times in zip(counted, seen, strict=True):
            if times < needed:
                piece.not_stored = "segment_sightings"

    def _outgoing(self, text: str) -> Outgoing:
        step, request, misses = self.step, self.request, self.segments.misses
        rewritten = _with_text(step.rule, step, text)
        assert rewritten is not None  # plan() took only requests whose text it can rewrite
        if self._headers is None:
            forwarded = misses.access.forwarded(request.headers)
            self._headers = misses.upstream.outgoing_headers(forwarded, identity=True)
        body, query = rewritten
        return Outgoing(request.method, request.rel_url.raw_path, query, self._headers, body)

    async def _fill(self, text: str, key: CacheKey, not_stored: str | None) -> tuple[Fill, bool]:
        """Synthesize ``text`` through the miss path (coalesced, stored unless
        ``not_stored``), within the answer's concurrency."""
        async with self.limit:
            fill, leader = self.segments.misses.start(
                self.step.rule,
                key,
                self._outgoing(text),
                self.labels,
                self.ttl,
                Directive.USE,
                self.started,
                credential=self.caller.credential,
                not_stored=not_stored,
            )
            with fill.reader():
                await fill.wait_done()
        return fill, leader

    async def _synthesize(self, part: _Part) -> None:
        assert self.counted is not None
        await self.counted
        if len(part.pieces) == 1:
            piece = part.pieces[0]
            reason = "one_off_segment" if not piece.store else piece.not_stored
            fill, leader = await self._fill(piece.text, piece.key, reason)
            audio, media_type = _answer(fill)
            piece.audio = part.audio = audio
            piece.media_type = part.media_type = media_type
            piece.result = _result(piece, fill, leader)
            return
        # A run: one call for the answer, under the key a request for the run's text has
        # (never stored: runs vary); its pieces are rendered apart for the cache.
        speech = dataclasses.replace(self.step.described.speech, text=part.text)
        key = self.key_for(speech, self.plan.namespace)
        run = asyncio.ensure_future(self._fill(part.text, key, "segment_run"))
        for piece in part.pieces:
            if piece.store and piece.not_stored is None:
                self.renders.append(asyncio.create_task(self._render(piece)))
        fill, leader = await run
        part.audio, part.media_type = _answer(fill)
        for piece in part.pieces:
            piece.result = _result(piece, fill, leader) if part.audio is not None else "failed"

    async def _render(self, piece: _Piece) -> None:
        await self._fill(piece.text, piece.key, None)


def _answer(fill: Fill) -> tuple[bytes | None, str]:
    if fill.status != 200 or not fill.complete:
        return None, ""
    media_type = dict((k.lower(), v) for k, v in fill.headers).get("content-type", "")
    return fill.body(), media_type


def _result(piece: _Piece, fill: Fill, leader: bool) -> str:
    if fill.status != 200 or not fill.complete:
        return "failed"
    if not piece.store:
        return "one_off"
    if piece.not_stored is not None:
        return "sighted"
    collapsed = not leader or fill.origin != "upstream"
    return "coalesced" if collapsed else "miss"
