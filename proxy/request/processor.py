"""The request path (the seed's AudioProcessor): look up, else synthesize, stream and store.

Every request that is not an admin or health route arrives here. Speech requests matched
by a route rule are served from the cache or filled from the upstream; everything else is
passed through untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from redis.exceptions import RedisError

from ..config.settings import CONTENT_TYPE_NAME, Settings
from ..core.http_cache import http_date, make_etag, plan_response
from ..core.keys import CacheKey, cache_key, upstream_identity
from ..core.policy import Directive, refusal_after_body, refusal_before_body, request_directive
from ..core.pricing import cost_of, price_per_million
from ..core.routes import InvalidSpeechRequest, RouteRule, SpeechRequest, find_rule
from ..core.tenants import BadTenant
from ..observability.access_log import REQUEST_ID, ROUTE, TEXT, tag
from ..observability.metrics import METRICS
from ..observability.tally import TALLY
from ..store.service import AudioCacheService, CachedAudio, EntryLabels, replayable_headers
from .coalescing import ClusterFlights, FlightSettings
from .fill import Fill, FillRegistry
from .prepared_hit import HitWire, UnsafeHeader, is_plain
from .upstream import (
    HOP_BY_HOP,
    UnsafePath,
    UpstreamClient,
    UpstreamError,
    check_path,
    strip_hop_by_hop,
)

log = logging.getLogger(__name__)

CACHE_NAME = "tts-cache"
# Requests already described, by fingerprint: a repeated request skips JSON parsing, text
# normalization, header checks and hashing (most of a hot hit's time). Small bodies only.
_KNOWN_ENTRIES = 4096
_KNOWN_MAX_BODY = 8192
_UNSEEN = object()
# Headers the proxy sets on answers to speech requests; never copied from the upstream.
_OWN_HEADERS = frozenset({"cache-status", "x-cache", "x-audio-cache-key", "content-location"})


def json_error(
    status: int, message: str, *, field: str | None = None, **extra: Any
) -> web.Response:
    """A JSON error body: what went wrong and, where one is to blame, which field."""
    error: dict[str, Any] = {"message": message, "status": status}
    if field is not None:
        error["field"] = field
    error.update(extra)
    return web.json_response({"error": error}, status=status)


@dataclass(frozen=True)
class Outgoing:
    """The request a miss sends upstream."""

    method: str
    path: str  # raw path below the upstream's base
    query: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass(frozen=True)
class Warmed:
    """What warming one request did: ``present`` (left alone), ``stored``, or why not."""

    key: CacheKey
    result: str
    upstream_called: bool


@dataclass(frozen=True, slots=True)
class _Known:
    """A request described before: everything its fingerprint decides."""

    speech: SpeechRequest
    tenant: str
    content_class: str | None  # the client's class header, None without one
    key: CacheKey
    metrics: _RouteMetrics


@dataclass(frozen=True, slots=True)
class _RouteMetrics:
    """What a request answered without an upstream call updates, for one route and voice."""

    hit_duration: Any
    characters: Any
    cost: Any
    price: float  # per million characters

    def saved(self, characters: int) -> None:
        """This request's characters (and their price) were not sent upstream."""
        TALLY.add(self.characters, characters)
        if self.price:
            TALLY.add(self.cost, cost_of(characters, self.price))


class AudioProcessor:
    """Serves speech from the cache, fills misses from the upstream, passes the rest through."""

    def __init__(
        self,
        settings: Settings,
        service: AudioCacheService,
        upstream: UpstreamClient,
        *,
        audio_path_prefix: str = "/audio",
    ) -> None:
        self.settings = settings
        self.service = service
        self.upstream = upstream
        self.rules = settings.rules
        self.fills = FillRegistry(continue_when_abandoned=settings.fill_continue_after_disconnect)
        self.flights: ClusterFlights | None = None
        if settings.coalescing_enabled:
            self.flights = ClusterFlights(
                service.redis,
                prefix=settings.audio_cache_key_prefix,
                settings=FlightSettings(
                    lock_seconds=settings.coalescing_lock_seconds,
                    wait_seconds=settings.coalescing_wait_seconds,
                    poll_seconds=min(0.25, settings.redis_socket_timeout_seconds / 2),
                ),
                breaker=service.breaker,
            )
        self.identity = settings.audio_cache_upstream_identity or upstream_identity(
            settings.upstream_url or ""
        )
        self.audio_path_prefix = audio_path_prefix.rstrip("/")
        self._class_header = settings.audio_cache_content_type_header.lower()
        self.tenants = settings.tenancy
        # Paths seen before, by method and raw path: their rule (None: not cacheable),
        # and they passed check_path.
        self._routed: dict[tuple[str, str], Any] = {}
        self._known: dict[tuple[Any, ...], _Known] = {}
        # Bodies up to this size are taken from the buffer when complete, without
        # request.read()'s loop (and never above the app's client_max_size).
        self._small_body = min(_KNOWN_MAX_BODY, int(settings.max_request_body_kb * 1024))
        # Per route, the request headers its fingerprint covers: all that describing it,
        # checking its class and finding its tenant read.
        self._read_headers = {
            rule.name: tuple(
                dict.fromkeys(
                    h.lower()
                    for h in (
                        "content-type",
                        *rule.headers,
                        self._class_header,
                        self.tenants.header or "",
                        self.tenants.api_key_header or "",
                    )
                    if h
                )
            )
            for rule in self.rules
        }
        self._route_metrics: dict[str, _RouteMetrics] = {}

    # -- entry point -----------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        raw_path = request.rel_url.raw_path
        routed = self._routed.get((request.method, raw_path), _UNSEEN)
        if routed is _UNSEEN:
            try:
                check_path(raw_path)  # without building the upstream URL
            except UnsafePath as exc:
                return json_error(400, str(exc), field="path")
            routed = find_rule(self.rules, request.method, request.path)
            if len(self._routed) >= _KNOWN_ENTRIES:
                del self._routed[next(iter(self._routed))]
            self._routed[(request.method, raw_path)] = routed
        if routed is None or not self.settings.audio_cache_enabled:
            return await self.pass_through(request, None, result="bypass")
        rule, path_params = routed
        content = request.content
        length = request.content_length
        if content.is_eof() and length is not None and length <= self._small_body:
            body = content.read_nowait()  # the usual small body, all there already
        else:
            limit = self.settings.client_body_timeout_seconds
            try:
                async with asyncio.timeout(limit):
                    body = await request.read()
            except TimeoutError:
                message = f"the request body did not arrive within {limit} s"
                return json_error(408, message, field="body")
        query = request.rel_url.raw_query_string
        headers = request.headers  # case-insensitive: no lower-cased copy on the hit path
        # Everything that describing the request reads, so that equal fingerprints describe
        # equally: the body, the query and every value of each header that matters.
        fingerprint = (
            rule.name,
            request.path,
            query,
            body,
            *[tuple(headers.getall(h, ())) for h in self._read_headers[rule.name]],
        )
        known = self._known.get(fingerprint)
        if known is None:
            lowered = {k.lower(): v for k, v in headers.items()}
            try:
                speech = rule.describe(
                    path_params=path_params, query=query, headers=lowered, body=body
                )
            except InvalidSpeechRequest as exc:
                return json_error(400, exc.message, field=exc.field)
            if speech is None:
                return await self.pass_through(request, body, result="bypass", detail="uncacheable")
        else:
            speech = known.speech
        request[ROUTE] = rule.name
        request[TEXT] = speech.text
        directive = Directive.USE
        if "cache-control" in headers or "pragma" in headers:
            directive = request_directive(
                {
                    "cache-control": ", ".join(headers.getall("cache-control", ())),
                    "pragma": ", ".join(headers.getall("pragma", ())),
                }
            )
        if directive is Directive.BYPASS:
            return await self.pass_through(request, body, result="bypass", detail="no-store")
        hot_tried = False
        if known is None:
            # Checked once per distinct request: these headers are part of the fingerprint.
            content_class = headers.get(self._class_header)
            if content_class is not None and not CONTENT_TYPE_NAME.match(content_class):
                return json_error(
                    400,
                    f"{self.settings.audio_cache_content_type_header} must match "
                    f"{CONTENT_TYPE_NAME.pattern}",
                    field=f"header:{self.settings.audio_cache_content_type_header}",
                )
            try:
                tenant = self.tenants.identify(lowered)
            except BadTenant as exc:
                return json_error(400, exc.message, field=exc.field)
            if not self.tenants.policy(tenant).enabled:
                return await self.pass_through(
                    request, body, result="bypass", detail="tenant-disabled"
                )
            key = self.key_for(speech, self.tenants.namespace(tenant))
            metrics = self._metrics_of(rule.name, speech.voice)
            known = _Known(speech, tenant, content_class, key, metrics)
            if len(body) <= _KNOWN_MAX_BODY:
                if len(self._known) >= _KNOWN_ENTRIES:
                    del self._known[next(iter(self._known))]
                self._known[fingerprint] = known
        elif directive is Directive.USE and is_plain(request):
            # The hot path: a plain request for an entry of the in-process hot tier.
            cached = self.service.hot_hit(known.key)
            if cached is not None:
                return self._plain_hit(request, cached, known.metrics, len(speech.text), started)
            hot_tried = True

        def for_a_miss() -> tuple[Outgoing, EntryLabels]:
            """What a miss needs, built only on a miss."""
            assert known is not None
            outgoing = Outgoing(
                # A HEAD miss fetches the whole audio: it is stored, and later GETs hit.
                method="GET" if request.method == "HEAD" else request.method,
                path=request.rel_url.raw_path,
                query=query,
                headers=self.upstream.outgoing_headers(headers, identity=True),
                body=body,
            )
            labels = self.labels_for(speech, rule, known.content_class, known.tenant)
            return outgoing, labels

        return await self._serve_speech(
            request, rule, speech, known.key, for_a_miss, directive, started, hot_tried=hot_tried
        )

    def labels_for(
        self, speech: SpeechRequest, rule: RouteRule, content_class: str | None, tenant: str
    ) -> EntryLabels:
        return EntryLabels(
            content_class=content_class or self.settings.classify(speech.text) or "default",
            route=rule.name,
            voice=speech.voice,
            model=speech.model,
            tenant=tenant,
        )

    def ttl_for(self, labels: EntryLabels) -> int:
        """The entry's TTL: the tenant's policy over the cache's table and default."""
        s = self.settings
        return self.tenants.ttl_for(
            labels.tenant,
            labels.content_class,
            s.audio_cache_content_type_ttls,
            s.audio_cache_ttl_seconds,
        )

    def key_for(self, speech: SpeechRequest, namespace: str = "") -> CacheKey:
        return cache_key(
            upstream=self.identity,
            route=speech.route,
            text=speech.text,
            params=speech.params,
            namespace=namespace,
        )

    async def _serve_speech(
        self,
        request: web.Request,
        rule: RouteRule,
        speech: SpeechRequest,
        key: CacheKey,
        for_a_miss: Callable[[], tuple[Outgoing, EntryLabels]],
        directive: Directive,
        started: float,
        *,
        hot_tried: bool = False,
    ) -> web.StreamResponse:
        stale = None
        if directive is Directive.USE:
            try:
                cached, stale = await self.service.get_or_stale(key, hot_tried=hot_tried)
            except RedisError as exc:
                log.warning("cache read failed, going to the upstream: %s", exc)
                METRICS.redis_errors.labels("get").inc()
                METRICS.fail_open.inc()
                cached = None
            if cached is not None:
                metrics = self._metrics_of(rule.name, speech.voice)
                if is_plain(request):
                    return self._plain_hit(request, cached, metrics, len(speech.text), started)
                metrics.saved(len(speech.text))
                response = await self.serve_cached(request, cached, status=f"{CACHE_NAME}; hit")
                TALLY.observe(metrics.hit_duration, time.perf_counter() - started)
                return response
        outgoing, labels = for_a_miss()
        fill, leader = self.start_fill(key, outgoing, labels, directive, started)
        if not leader:
            METRICS.coalesced.labels("process").inc()
        fwd = "request" if directive is Directive.REFRESH else "miss"
        response = await self.serve_fill(request, fill, key, fwd=fwd, leader=leader, stale=stale)
        result = "miss" if leader and fill.origin == "upstream" else "coalesced"
        if response.headers.get("X-Cache") == "STALE":
            result = "stale"
        if result == "coalesced" and fill.status == 200:
            self._metrics_of(rule.name, speech.voice).saved(len(speech.text))
        METRICS.requests.labels(rule.name, result).observe(time.perf_counter() - started)
        return response

    def start_fill(
        self,
        key: CacheKey,
        outgoing: Outgoing,
        labels: EntryLabels,
        directive: Directive,
        started: float,
    ) -> tuple[Fill, bool]:
        """Join the fill in flight for ``key`` (False), or start one (True): identical
        misses, in this process or on any replica, make one upstream call."""
        ttl = self.ttl_for(labels)

        async def lead(fill: Fill) -> None:
            await self._run_fill(fill, outgoing, key, labels, ttl, started)

        async def runner(fill: Fill) -> None:
            if self.flights is None:
                await lead(fill)
                return
            # A refresh must reach the upstream, so it never settles for a stored answer.
            recheck = self.service.fetch_fresh if directive is Directive.USE else None
            await self.flights.run(fill, key, lead, recheck=recheck)

        return self.fills.join_or_start(key.hex, runner)

    async def warm(
        self,
        speech: SpeechRequest,
        rule: RouteRule,
        outgoing: Outgoing,
        *,
        content_class: str | None,
        tenant: str,
        refresh: bool = False,
    ) -> Warmed:
        """Have one request in the cache (prefetch): left alone when present (its TTL and
        hits untouched), else filled exactly as a client's miss would be, so it coalesces
        with identical misses. ``refresh`` re-synthesizes it even when present."""
        key = self.key_for(speech, self.tenants.namespace(tenant))
        if not self.settings.audio_cache_enabled:
            return Warmed(key, "cache_disabled", False)
        if not self.tenants.policy(tenant).enabled:
            return Warmed(key, "tenant_disabled", False)
        if not refresh and await self.service.ttl_ms(key) > 0:
            return Warmed(key, "present", False)
        labels = self.labels_for(speech, rule, content_class, tenant)
        directive = Directive.REFRESH if refresh else Directive.USE
        fill, leader = self.start_fill(key, outgoing, labels, directive, time.perf_counter())
        with fill.reader():  # a client joining and leaving must not cancel this fill
            await fill.wait_done()
        called = leader and fill.origin == "upstream"
        if fill.stored:
            return Warmed(key, "stored", called)
        return Warmed(key, fill.refusal or "not_stored", called)

    def _metrics_of(self, route: str, voice: str) -> _RouteMetrics:
        """The labelled metrics of a route and voice and their price, looked up once
        (``labels()`` takes a lock and a dict lookup each time)."""
        name = f"{route}:{voice}"
        found = self._route_metrics.get(name)
        if found is None:
            found = _RouteMetrics(
                hit_duration=METRICS.requests.labels(route, "hit"),
                characters=METRICS.characters_saved.labels(route),
                cost=METRICS.cost_saved.labels(route),
                price=price_per_million(self.settings.cost_per_million_characters, route, voice),
            )
            if len(self._route_metrics) < 1024:
                self._route_metrics[name] = found
        return found

    # -- misses ----------------------------------------------------------------------

    async def _run_fill(
        self,
        fill: Fill,
        outgoing: Outgoing,
        key: CacheKey,
        labels: EntryLabels,
        ttl: int,
        started: float,
    ) -> None:
        t0 = time.perf_counter()
        try:
            upstream = await self.upstream.request(
                outgoing.method, outgoing.path, outgoing.query, outgoing.headers, outgoing.body
            )
        except UpstreamError as exc:
            METRICS.upstream_errors.labels(exc.kind).inc()
            await fill.finish(complete=False, error=exc)
            fill.settle(stored=False, refusal="upstream_error")
            return
        lowered = {k.lower(): v for k, v in upstream.headers.items()}
        refusal = refusal_before_body(
            status=upstream.status, headers=lowered, max_entry_bytes=self.settings.max_entry_bytes
        )
        await fill.set_head(
            upstream.status,
            [(k, v) for k, v in upstream.headers.items() if k.lower() not in _OWN_HEADERS],
        )
        complete = False
        first = True
        try:
            async with upstream:
                async for chunk in upstream.content.iter_any():
                    if first:
                        METRICS.time_to_first_byte.labels(labels.route).observe(
                            time.perf_counter() - started
                        )
                        first = False
                    await fill.add(chunk)
                complete = True
        except Exception as exc:  # the upstream broke off mid-body
            METRICS.upstream_errors.labels("truncated").inc()
            log.warning("upstream answer for %s cut short: %r", key.hex[:12], exc)
        METRICS.upstream_duration.labels(labels.route, str(upstream.status)).observe(
            time.perf_counter() - t0
        )
        await fill.finish(complete=complete)
        audio = fill.body()
        if refusal is None:
            refusal = refusal_after_body(
                headers=lowered,
                body=audio,
                complete=complete,
                max_entry_bytes=self.settings.max_entry_bytes,
            )
        if refusal is not None:
            METRICS.not_stored.labels(refusal).inc()
            METRICS.operations.labels("set", "skipped").inc()
            fill.settle(stored=False, refusal=refusal)
            return
        try:
            result = await self.service.put(
                key,
                audio,
                media_type=lowered.get("content-type", "application/octet-stream"),
                ttl_seconds=ttl,
                labels=labels,
                headers=replayable_headers(upstream.headers.items()),
            )
        except RedisError as exc:
            log.warning("could not store %s: %s", key.hex[:12], exc)
            METRICS.redis_errors.labels("set").inc()
            METRICS.operations.labels("set", "error").inc()
            fill.settle(stored=False, refusal="store_error")
            return
        fill.settle(stored=result.stored, refusal=None if result.stored else result.reason)

    async def serve_fill(
        self,
        request: web.Request,
        fill: Fill,
        key: CacheKey,
        *,
        fwd: str,
        leader: bool = True,
        stale: CachedAudio | None = None,
    ) -> web.StreamResponse:
        """Stream a fill to this client; ranged or conditional requests wait for it to end.
        With a ``stale`` copy, an upstream failure is answered with it instead."""
        with fill.reader():  # entered before any await: an abandoned fill counts its readers
            await fill.wait_head()
            if stale is not None and (fill.status is None or fill.status >= 500):
                failed = fill.status or (fill.error.status if fill.error else 502)
                status = f"{CACHE_NAME}; fwd=stale; fwd-status={failed}; detail=stale-if-error"
                return await self.serve_cached(request, stale, status=status)
            # RFC 9211: a request that rode on another's upstream call was "collapsed".
            collapsed = not leader or fill.origin != "upstream"
            fwd_status = f"{CACHE_NAME}; fwd={fwd}" + ("; collapsed" if collapsed else "")
            if fill.status is None:
                error = fill.error or UpstreamError(502, "protocol", "the upstream gave no answer")
                response = json_error(error.status, error.message, upstream_error=error.kind)
                response.headers["Cache-Status"] = fwd_status
                return response
            wants_whole = request.method == "HEAD" or any(
                h in request.headers for h in ("Range", "If-None-Match", "If-Modified-Since")
            )
            if wants_whole and fill.status == 200:
                await fill.wait_done()
                if fill.stored:
                    cached = await self._stored_answer(fill, key)
                    return await self.serve_cached(request, cached, status=f"{fwd_status}; stored")
            return await self._stream_fill(request, fill, key, fwd_status)

    async def _stream_fill(
        self, request: web.Request, fill: Fill, key: CacheKey, fwd_status: str
    ) -> web.StreamResponse:
        assert fill.status is not None
        refusal = refusal_before_body(
            status=fill.status,
            headers={k.lower(): v for k, v in fill.headers},
            max_entry_bytes=self.settings.max_entry_bytes,
        )
        status = fwd_status + ("; stored" if refusal is None else "")
        response = web.StreamResponse(status=fill.status)
        for name, value in strip_hop_by_hop(fill.headers).items():
            response.headers.add(name, value)
        if fill.finished and fill.complete:
            response.content_length = fill.size
        self._mark(response, key, status, "MISS")
        tag(request, response)
        try:
            await response.prepare(request)
            if request.method != "HEAD":
                async for chunk in fill.stream():
                    await response.write(chunk)
            if not fill.complete:
                # Close the connection so the client can tell the answer was cut short.
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
        except ConnectionResetError:
            log.debug("client left during the miss of %s; the fill goes on", key.hex[:12])
        return response

    async def _stored_answer(self, fill: Fill, key: CacheKey) -> CachedAudio:
        """The entry just stored, read back so its validators match later hits."""
        try:
            cached = await self.service.fetch(key)
        except RedisError:
            cached = None
        return cached if cached is not None else self._as_cached(fill, key)

    def _as_cached(self, fill: Fill, key: CacheKey) -> CachedAudio:
        from zlib import crc32

        audio = fill.body()
        now = int(time.time() * 1000)
        ttl_ms = max(self.settings.audio_cache_ttl_seconds * 1000, 0)
        headers = {k.lower(): v for k, v in fill.headers}
        return CachedAudio(
            key=key,
            audio=audio,
            media_type=headers.get("content-type", "application/octet-stream"),
            headers=tuple(replayable_headers(fill.headers)),
            created_ms=now,
            expires_ms=now + ttl_ms,
            content_class="",
            checksum=crc32(audio),
        )

    # -- hits ------------------------------------------------------------------------

    def _mark(self, response: web.StreamResponse, key: CacheKey, status: str, x_cache: str) -> None:
        response.headers["Cache-Status"] = status
        response.headers["X-Cache"] = x_cache
        response.headers["X-Audio-Cache-Key"] = key.hex
        response.headers["Content-Location"] = f"{self.audio_path_prefix}/{key.hex}"

    async def serve_cached(
        self, request: web.Request, cached: CachedAudio, *, status: str
    ) -> web.StreamResponse:
        """A stored answer with validators, conditional requests, byte ranges and HEAD."""
        now_ms = int(time.time() * 1000)
        etag = make_etag(cached.key.hex, cached.checksum)
        ttl_s = max(0, (cached.expires_ms - now_ms) // 1000)
        age_s = max(0, (now_ms - cached.created_ms) // 1000)
        if "; hit" in status:
            status += f"; ttl={ttl_s}"
        length = len(cached.audio)
        plan = plan_response(
            request.headers,  # case-insensitive already
            length=length,
            etag=etag,
            last_modified_ms=cached.created_ms,
        )
        headers = [
            *self._entry_headers(cached, etag),
            ("Age", str(age_s)),
            ("Cache-Control", f"max-age={ttl_s}"),
            ("Cache-Status", status),
            ("X-Cache", "HIT" if "; hit" in status else _x_cache_of(status)),
        ]
        if plan.status == 304:
            return web.Response(status=304, headers=headers)
        if plan.status == 416:
            headers.append(("Content-Range", f"bytes */{length}"))
            return web.Response(status=416, headers=headers)
        start, end = (plan.start, plan.end) if plan.status == 206 else (0, length - 1)
        if plan.status == 206:
            headers.append(("Content-Range", f"bytes {start}-{end}/{length}"))
        headers.append(("Content-Type", cached.media_type))
        part = cached.audio if plan.status == 200 else cached.audio[start : end + 1]
        if request.method != "HEAD":
            TALLY.add(METRICS.bytes_served_from_cache, len(part))
        # On HEAD aiohttp sends the headers (Content-Length included) and not the body.
        return web.Response(status=plan.status, body=part, headers=CIMultiDict(headers))

    def _entry_headers(self, cached: CachedAudio, etag: str) -> list[tuple[str, str]]:
        """What every stored answer of an entry carries, whatever the request. (The
        replayed upstream headers never include these names: see replayable_headers.)"""
        return [
            *cached.headers,
            ("ETag", etag),
            ("Last-Modified", http_date(cached.created_ms)),
            ("Accept-Ranges", "bytes"),
            ("X-Audio-Cache-Key", cached.key.hex),
            ("Content-Location", f"{self.audio_path_prefix}/{cached.key.hex}"),
        ]

    def _plain_hit(
        self,
        request: web.Request,
        cached: CachedAudio,
        metrics: _RouteMetrics,
        characters: int,
        started: float,
    ) -> web.StreamResponse:
        """A plain hit (see :func:`proxy.request.prepared_hit.is_plain`): the whole audio behind
        headers serialized once for this entry (and kept with it in the hot tier)."""
        wire = cached.memo.get("wire")
        if not isinstance(wire, HitWire):
            etag = make_etag(cached.key.hex, cached.checksum)
            fixed = self._entry_headers(cached, etag)
            fixed += [("X-Cache", "HIT"), ("Content-Type", cached.media_type)]
            try:
                wire = cached.memo["wire"] = HitWire(fixed, len(cached.audio), CACHE_NAME)
            except UnsafeHeader as exc:  # written by something else: aiohttp refuses it too
                log.warning("cache entry %s cannot be answered: %s", cached.key.hex, exc)
                return json_error(500, f"the cached entry cannot be answered: {exc}")
        now = time.time()
        now_ms = int(now * 1000)
        age_s = max(0, (now_ms - cached.created_ms) // 1000)
        ttl_s = max(0, (cached.expires_ms - now_ms) // 1000)
        response = wire.answer(
            wire.head(age_s, ttl_s, int(now)), request.get(REQUEST_ID), cached.audio
        )
        metrics.saved(characters)
        TALLY.add(METRICS.bytes_served_from_cache, len(cached.audio))
        TALLY.observe(metrics.hit_duration, time.perf_counter() - started)
        return response

    async def serve_by_key(self, request: web.Request) -> web.StreamResponse:
        """``GET /audio/{key}``: a cached entry by its key, for players and browsers."""
        key = CacheKey.parse(request.match_info["key"])
        if key is None:
            return json_error(400, "the key must be 64 lowercase hex characters", field="key")
        try:
            cached = await self.service.get(key)
        except RedisError:
            METRICS.redis_errors.labels("get").inc()
            return json_error(503, "the cache store is unavailable")
        if cached is None:
            return json_error(404, "no cached audio for this key", field="key")
        return await self.serve_cached(request, cached, status=f"{CACHE_NAME}; hit")

    # -- everything else -------------------------------------------------------------

    async def pass_through(
        self,
        request: web.Request,
        body: bytes | None,
        *,
        result: str,
        detail: str | None = None,
    ) -> web.StreamResponse:
        """Forward to the upstream and stream the answer back, storing nothing."""
        started = time.perf_counter()
        headers = self.upstream.outgoing_headers(request.headers, identity=False)
        payload: Any = (
            body if body is not None else (request.content if request.can_read_body else None)
        )
        try:
            upstream = await self.upstream.request(
                request.method, request.rel_url.raw_path, request.rel_url.raw_query_string,
                headers, payload,
            )  # fmt: skip
        except UpstreamError as exc:
            METRICS.upstream_errors.labels(exc.kind).inc()
            return json_error(exc.status, exc.message, upstream_error=exc.kind)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                response.headers.add(name, value)
        if upstream.content_length is not None and "chunked" not in upstream.headers.get(
            "Transfer-Encoding", ""
        ):
            response.content_length = upstream.content_length
        status = f"{CACHE_NAME}; fwd=bypass" + (f"; detail={detail}" if detail else "")
        response.headers["Cache-Status"] = status
        response.headers["X-Cache"] = "BYPASS"
        tag(request, response)
        await response.prepare(request)
        try:
            async with upstream:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
        except Exception as exc:
            log.warning("pass-through cut short: %r", exc)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        route = "passthrough" if detail is None else "bypass"
        METRICS.requests.labels(route, result).observe(time.perf_counter() - started)
        return response


def _x_cache_of(status: str) -> str:
    """X-Cache for a stored answer that is not a hit."""
    return "STALE" if "fwd=stale" in status else "MISS"
