"""The request path (``AudioProcessor``): look up, else synthesize, stream and store.

Every request that is not an admin or health route arrives here and goes through the
stages of this folder, one module each::

    classify ──► Bypass ──────────────────────────────► passthrough
        │          └──► a WebSocket upgrade ─────────────► websocket (relayed)
        │
        └──► Speech ──► hits (hot tier, then Redis) ──► answered from the cache
                              │
                              ├──► segments (opt-in: stored pieces + missed pieces) ──► joined
                              │
                              └──► misses (fill, coalesced) ──► streamed and stored

Each stage decides with the pure functions of :mod:`proxy.core` and does only its own I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from ..config.settings import Settings
from ..core.keys import CacheKey, upstream_identity
from ..core.outcomes import HIT, CacheStatus, Forward, Result
from ..core.policy import Directive
from ..core.routes import RouteRule, SpeechRequest
from ..core.tenants import BadTenant
from ..observability import tracing
from ..observability.metrics import METRICS
from ..observability.tally import TALLY
from ..store.service import AudioCacheService, CachedAudio, EntryLabels
from .access import Access, Caller, openai_error
from .classify import Bypass, Classifier, Speech
from .coalescing import Claim
from .errors import json_error
from .fill import Fill
from .hits import Hits
from .known_hits import KnownHits
from .misses import Misses, Outgoing
from .passthrough import PassThrough
from .prepared_hit import PreparedHit, is_plain
from .savings import Savings
from .segments import SegmentPlan, Segments
from .sse import audio_type
from .upstream import UpstreamClient
from .websocket import WebSocketRelay, is_upgrade

log = logging.getLogger(__name__)

__all__ = ["AudioProcessor", "Outgoing", "Warmed"]


@dataclass(frozen=True)
class Warmed:
    """What warming one request did: ``present`` (left alone), ``stored``, or why not."""

    key: CacheKey
    result: str
    upstream_called: bool


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
        self.lookups = tracing.lookups(service)  # the service itself unless tracing is on
        self.upstream = upstream
        self.rules = settings.rules
        self.tenants = settings.tenancy
        self.identity = settings.audio_cache_upstream_identity or upstream_identity(
            settings.upstream_url or ""
        )
        self.savings = Savings(settings.cost_per_million_characters)
        self.access = Access(settings)
        self.classifier = Classifier(settings, self.identity, self.savings)
        self.hits = Hits(audio_path_prefix)
        self.misses = Misses(settings, service, upstream, self.hits, self.access)
        self.pass_through = PassThrough(upstream, self.access)
        self.websockets = WebSocketRelay(settings, upstream, self.access)
        self.segments = Segments(settings, service, self.misses)
        self.fills = self.misses.fills
        self.flights = self.misses.flights
        # Known hits skip the spans a traced request has: only without tracing.
        learns = settings.known_hits_enabled and self.lookups is service
        self.known = KnownHits(self.access, service, self.hits) if learns else None

    def attach(self, redis: Any, key_secret: bytes) -> None:
        """Connect what the request path shares through the store, once it is open."""
        self.access.attach(redis, key_secret, self.service.guard)
        self.classifier.key_secret = key_secret

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        caller = self.access.identify(request)
        # Asked of the expected type: web.Response is an ABC (a MutableMapping), and an
        # isinstance that misses it walks Python code, on every request.
        if not isinstance(caller, Caller):
            return caller  # no credential the proxy accepts: nothing goes upstream
        step = await self.classifier.classify(request, caller)
        if isinstance(step, Bypass):
            if not step.speech_route and not self.access.may_forward(request.path):
                METRICS.client_refusals.labels("path_not_forwarded").inc()
                message = f"no route {request.method} {request.path} on this proxy"
                return openai_error(404, message, code="not_found")
            tenant = caller.tenant or ""
            limited = self.access.limited(caller, tenant)
            refused = await self.access.admit(caller, tenant) if limited else None
            if refused is not None:
                return refused
            if not step.speech_route and is_upgrade(request):
                return await self.websockets(request, caller)
            return await self.pass_through(request, step.body, caller, detail=step.detail)
        if not isinstance(step, Speech):
            return step  # refused
        described = step.described
        limited = self.access.limited(caller, described.tenant)
        refused = await self.access.admit(caller, described.tenant) if limited else None
        if refused is not None:
            return refused
        verified = self.access.verified_here(caller) or await self.access.verified(caller)
        hot_tried = False
        sse = step.described.speech.sse
        plain = not sse and is_plain(request)
        if verified and step.seen_before and step.directive is Directive.USE and plain:
            # The hot path: a plain request for an entry of the in-process hot tier.
            cached = self.lookups.hot_hit(described.key)
            if cached is not None:
                characters = len(described.speech.text)
                answer = self.hits.plain(request, cached, described.metrics, characters, started)
                if not limited:
                    self._learn(request, step, caller, answer)
                return answer
            hot_tried = True
        response, result = await self._serve(
            request,
            step,
            caller,
            started,
            hot_tried=hot_tried,
            verified=verified,
            learn=not limited,
        )
        if result is not None and result is not Result.HIT:  # hits are tallied apart
            METRICS.requests.labels(step.rule.name, result).observe(time.perf_counter() - started)
        return response

    def _learn(
        self, request: web.Request, step: Speech, caller: Caller, answer: web.StreamResponse
    ) -> None:
        """Remember a plain hit's request by its bytes (proxy.request.known_hits)."""
        if self.known is None or not isinstance(answer, PreparedHit):
            return
        described = step.described
        self.known.learn(
            request,
            step.body,
            key=described.key,
            caller=caller,
            tenant=described.tenant,
            metrics=described.metrics,
            route=step.rule.name,
            text=described.speech.text,
        )

    async def _serve(
        self,
        request: web.Request,
        step: Speech,
        caller: Caller,
        started: float,
        *,
        hot_tried: bool,
        verified: bool,
        learn: bool,
    ) -> tuple[web.StreamResponse, Result | None]:
        claim = None
        if verified and step.directive is Directive.USE and not step.seen_before:
            # Most likely a miss: its flight's lead is taken beside the lookup, so that the
            # upstream call does not wait for a second round trip to Redis.
            claim = self.misses.claim(step.described.key, step.described.speech.sse)
        try:
            return await self._look_up_or_fill(
                request,
                step,
                caller,
                started,
                hot_tried=hot_tried,
                verified=verified,
                claim=claim,
                learn=learn,
            )
        finally:
            if claim is not None:  # given up unless the miss's fill adopted it
                self.misses.let_go(claim)

    async def _look_up_or_fill(
        self,
        request: web.Request,
        step: Speech,
        caller: Caller,
        started: float,
        *,
        hot_tried: bool,
        verified: bool,
        claim: Claim | None,
        learn: bool,
    ) -> tuple[web.StreamResponse, Result | None]:
        described = step.described
        characters = len(described.speech.text)
        stale = None
        plan: SegmentPlan | None = None
        # An upstream credential not yet accepted gets no stored audio: its request goes
        # upstream with it (RFC 9111 §3.5), and a success lets it hit from then on.
        if step.directive is Directive.USE and verified:
            planned = self.segments.plan(request, step, self.key_for)
            if planned is not None and not isinstance(planned, SegmentPlan):
                return planned, None
            plan = planned
            try:
                cached, stale = await self._look_up(described.key, plan, hot_tried=hot_tried)
            except RedisError as exc:
                log.warning("cache read failed, going to the upstream: %s", exc)
                METRICS.redis_errors.labels("get").inc()
                METRICS.fail_open.inc()
                cached = None
            if cached is not None:
                if described.speech.sse:
                    described.metrics.saved(characters)
                    events = self.hits.events(cached)
                    TALLY.observe(described.metrics.hit_duration, time.perf_counter() - started)
                    return events, Result.HIT
                if is_plain(request):
                    answer = self.hits.plain(
                        request, cached, described.metrics, characters, started
                    )
                    if learn and step.directive is Directive.USE:
                        self._learn(request, step, caller, answer)
                    return answer, Result.HIT
                described.metrics.saved(characters)
                response = await self.hits.serve(request, cached)
                TALLY.observe(described.metrics.hit_duration, time.perf_counter() - started)
                return response, Result.HIT
        if not verified:
            self.service.count_miss(described.key)
        labels = self.labels_for(
            described.speech, step.rule, described.content_class, described.tenant
        )
        if plan is not None:  # stored pieces only for callers stored audio may be served to
            joined = await self.segments.serve(
                request, step, plan, caller, labels, self.ttl_for(labels), started, self.key_for
            )
            if joined is not None:
                status = CacheStatus.parse(joined.headers.get("Cache-Status", ""))
                result = status.result if status is not None else None
                if result is Result.HIT:  # not a plain hit: tallied here
                    elapsed = time.perf_counter() - started
                    METRICS.requests.labels(step.rule.name, result).observe(elapsed)
                return joined, result
        refused = await self.access.charge(caller, described.tenant, characters)
        if refused is not None:
            return refused, None
        outgoing = Outgoing(
            # A HEAD miss fetches the whole audio: it is stored, and later GETs hit.
            method="GET" if request.method == "HEAD" else request.method,
            path=request.rel_url.raw_path,
            query=step.query,
            headers=self.upstream.outgoing_headers(
                self.access.forwarded(request.headers), identity=True
            ),
            body=step.body,
            sse_media_type=audio_type(described.speech) if described.speech.sse else None,
        )
        fill, leader = self.misses.start(
            step.rule,
            described.key,
            outgoing,
            labels,
            self.ttl_for(labels),
            step.directive,
            started,
            credential=caller.credential,
            private=not verified,
        )
        if claim is not None:  # adopted by the fill if it leads, else let go now
            self.misses.let_go(claim)
        if not leader:
            METRICS.coalesced.labels("process").inc()
            await self.access.refund(caller, described.tenant, characters)
        fwd = Forward.REQUEST if step.directive is Directive.REFRESH else Forward.MISS
        response, result = await self.misses.serve(
            request, step.rule, fill, described.key, fwd=fwd, leader=leader, stale=stale,
            sse=described.speech.sse,
        )  # fmt: skip
        if leader and fill.origin == "upstream":
            self.access.sent(caller, characters)
        elif leader:  # another replica's call (or the store) answered this fill
            await self.access.refund(caller, described.tenant, characters)
        if result is Result.COALESCED and fill.status == 200:
            described.metrics.saved(characters)
        return response, result

    async def _look_up(
        self, key: CacheKey, plan: SegmentPlan | None, *, hot_tried: bool
    ) -> tuple[CachedAudio | None, CachedAudio | None]:
        """The whole text's entry (fresh, stale). A segment plan's pieces are read with it,
        in the same round trip: with segments on, a text of several pieces is mostly stored
        as its pieces, and its first byte should wait for one round trip, not two."""
        lookup = self.lookups.get_or_stale(key, hot_tried=hot_tried)
        if plan is None:
            return await lookup
        found = await asyncio.gather(lookup, *self.segments.reads(plan), return_exceptions=True)
        for failed in found:  # raised once every read has ended: none may land later
            if isinstance(failed, BaseException):
                raise failed
        whole: tuple[CachedAudio | None, CachedAudio | None] = found[0]
        return whole

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
        return self.classifier.key_for(speech, namespace)

    def start_fill(
        self,
        key: CacheKey,
        outgoing: Outgoing,
        labels: EntryLabels,
        directive: Directive,
        started: float,
    ) -> tuple[Fill, bool]:
        """Join the fill in flight for ``key`` (False), or start one (True)."""
        rule = next(r for r in self.rules if r.name == labels.route)
        return self.misses.start(
            rule, key, outgoing, labels, self.ttl_for(labels), directive, started
        )

    async def serve_cached(
        self, request: web.Request, cached: CachedAudio, *, status: CacheStatus = HIT
    ) -> web.StreamResponse:
        return await self.hits.serve(request, cached, status=status)

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

    async def serve_by_key(self, request: web.Request) -> web.StreamResponse:
        """``GET /audio/{key}``: a cached entry by its key, for players and browsers. The
        same callers as on the speech routes; another tenant's isolated entry is a 404."""
        key = CacheKey.parse(request.match_info["key"])
        if key is None:
            return json_error(400, "the key must be 64 lowercase hex characters", field="key")
        caller = self.access.identify(request)
        if not isinstance(caller, Caller):  # asked of the expected type, as in handle
            return caller
        try:
            tenant = self.classifier.tenant_of(
                {k.lower(): v for k, v in request.headers.items()}, caller
            )
        except BadTenant as exc:
            return json_error(403, exc.message, field=exc.field)
        # Counted like a speech request: stored audio is what a per-minute limit rations.
        limited = self.access.limited(caller, tenant)
        refused = await self.access.admit(caller, tenant) if limited else None
        if refused is not None:
            return refused
        if not await self.access.verified(caller):
            seconds = int(self.settings.credential_verify_seconds)
            message = (
                "Cached audio is served to credentials the upstream accepted in the last "
                f"{seconds} s: make a speech request with this credential first."
            )
            return openai_error(401, message, code="credential_not_verified")
        missing = json_error(404, "no cached audio for this key", field="key")
        try:
            info = await self.service.info(key)
            if info is not None and info.tenant != tenant and self.tenants.isolated(info.tenant):
                return missing  # said the same way as absent: keys are not an oracle
            cached = await self.service.get(key)
        except RedisError:
            METRICS.redis_errors.labels("get").inc()
            return json_error(503, "the cache store is unavailable")
        if cached is None:
            return missing
        return await self.hits.serve(request, cached)
